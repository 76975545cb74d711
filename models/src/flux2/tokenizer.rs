//! FLUX.2 [klein] prompt tokenisation: Qwen chat template, then pad/truncate to 512 tokens.
//!
//! Follows diffusers 0.42.1 `pipelines/flux2/pipeline_flux2_klein.py`
//! (`Flux2KleinPipeline._get_qwen3_prompt_embeds`): each prompt is rendered with
//! `tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
//! add_generation_prompt=True, enable_thinking=False)` and tokenised with
//! `tokenizer(text, padding="max_length", truncation=True, max_length=512)`. That call leaves
//! `add_special_tokens` at its default (True): the checkpoint's own post-processor decides, and
//! the Qwen one adds nothing. Truncation and padding are configured on the `tokenizers` backend
//! exactly as transformers' fast tokenizer does (`enable_truncation` longest-first,
//! `enable_padding` to a fixed length with the config's `pad_token` and `padding_side`).

mod chat_template;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

pub use chat_template::ChatTemplate;

use crate::{ModelError, Result};

/// `max_sequence_length` of the klein pipeline.
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// A special-token entry of `tokenizer_config.json`: a plain string or an `AddedToken` dict.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenEntry {
    Plain(String),
    Added { content: String },
}

impl TokenEntry {
    fn content(&self) -> &str {
        match self {
            TokenEntry::Plain(s) => s,
            TokenEntry::Added { content } => content,
        }
    }
}

/// `chat_template` is either a string or a list of named templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TemplateEntry {
    Single(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// The fields of `tokenizer/tokenizer_config.json` used here.
#[derive(Debug, Clone, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<TemplateEntry>,
    #[serde(default)]
    pad_token: Option<TokenEntry>,
    #[serde(default)]
    eos_token: Option<TokenEntry>,
    #[serde(default)]
    bos_token: Option<TokenEntry>,
    #[serde(default)]
    unk_token: Option<TokenEntry>,
    #[serde(default)]
    padding_side: Option<String>,
    #[serde(default)]
    truncation_side: Option<String>,
}

/// Token ids and attention mask of a batch of prompts, each exactly `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompts {
    /// `(B, max_length)` token ids.
    pub input_ids: Vec<Vec<u32>>,
    /// `(B, max_length)`, 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// The chat-template text each prompt was rendered to.
    pub rendered: Vec<String>,
}

impl TokenizedPrompts {
    /// `(input_ids, attention_mask)` as `(B, L)` u32 tensors on `device`.
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let b = self.input_ids.len();
        let l = self.input_ids.first().map_or(0, Vec::len);
        let flat = |v: &Vec<Vec<u32>>| v.iter().flatten().copied().collect::<Vec<u32>>();
        let ids = Tensor::from_vec(flat(&self.input_ids), (b, l), device)?;
        let mask = Tensor::from_vec(flat(&self.attention_mask), (b, l), device)?;
        Ok((ids, mask))
    }
}

/// The Qwen tokenizer of a FLUX.2 [klein] checkpoint with its chat template.
#[derive(Debug, Clone)]
pub struct Flux2Tokenizer {
    tokenizer: Tokenizer,
    template: std::sync::Arc<ChatTemplate>,
    special: Vec<(String, String)>,
    max_length: usize,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::MissingFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Flux2Tokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` and, if present, `chat_template.jinja`
    /// (which takes precedence over the config's `chat_template`, as in transformers) from a
    /// diffusers `tokenizer/` folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let jinja = dir.join("chat_template.jinja");
        Self::from_files(
            &dir.join("tokenizer.json"),
            &dir.join("tokenizer_config.json"),
            jinja.is_file().then_some(jinja.as_path()),
        )
    }

    /// Loads from explicit files; see [`Flux2Tokenizer::from_dir`].
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: &Path,
        chat_template_jinja: Option<&Path>,
    ) -> Result<Self> {
        if !tokenizer_json.is_file() {
            return Err(ModelError::MissingFile {
                path: tokenizer_json.to_path_buf(),
                reason: "tokenizer file not found".into(),
            });
        }
        let mut tokenizer = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tokenizer_json.display())))?;
        let cfg: TokenizerConfig = read_json(tokenizer_config)?;
        let template_src = match chat_template_jinja {
            Some(p) => std::fs::read_to_string(p).map_err(|e| ModelError::MissingFile {
                path: PathBuf::from(p),
                reason: e.to_string(),
            })?,
            None => match cfg.chat_template.clone() {
                Some(TemplateEntry::Single(s)) => s,
                Some(TemplateEntry::Named(list)) => list
                    .into_iter()
                    .find(|t| t.name == "default")
                    .map(|t| t.template)
                    .ok_or_else(|| ModelError::Config {
                        path: tokenizer_config.to_path_buf(),
                        reason: "chat_template list has no `default` entry".into(),
                    })?,
                None => {
                    return Err(ModelError::Config {
                        path: tokenizer_config.to_path_buf(),
                        reason: "no chat_template (and no chat_template.jinja beside it)".into(),
                    })
                }
            },
        };
        let template = ChatTemplate::new(&template_src)?;
        let pad_token = cfg
            .pad_token
            .as_ref()
            .map(|t| t.content().to_string())
            .ok_or_else(|| ModelError::Config {
                path: tokenizer_config.to_path_buf(),
                reason: "no pad_token (needed to pad prompts to 512 tokens)".into(),
            })?;
        let pad_id = tokenizer.token_to_id(&pad_token).ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "pad token `{pad_token}` is not in {}",
                tokenizer_json.display()
            ))
        })?;
        let side = |s: &Option<String>, key: &str| -> Result<bool> {
            match s.as_deref() {
                None | Some("right") => Ok(true),
                Some("left") => Ok(false),
                Some(o) => Err(ModelError::Config {
                    path: tokenizer_config.to_path_buf(),
                    reason: format!("{key} `{o}`"),
                }),
            }
        };
        let pad_right = side(&cfg.padding_side, "padding_side")?;
        let trunc_right = side(&cfg.truncation_side, "truncation_side")?;
        let max_length = MAX_SEQUENCE_LENGTH;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: if trunc_right {
                    TruncationDirection::Right
                } else {
                    TruncationDirection::Left
                },
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: if pad_right {
                PaddingDirection::Right
            } else {
                PaddingDirection::Left
            },
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad_token.clone(),
        }));
        let mut special = Vec::new();
        for (k, v) in [
            ("bos_token", &cfg.bos_token),
            ("eos_token", &cfg.eos_token),
            ("unk_token", &cfg.unk_token),
            ("pad_token", &cfg.pad_token),
        ] {
            if let Some(v) = v {
                special.push((k.to_string(), v.content().to_string()));
            }
        }
        Ok(Self {
            tokenizer,
            template: std::sync::Arc::new(template),
            special,
            max_length,
        })
    }

    /// Sequence length every prompt is padded / truncated to (512 by default).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Changes the padded / truncated length (the pipeline's `max_sequence_length`).
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self> {
        let mut trunc = self.tokenizer.get_truncation().cloned().unwrap_or_default();
        trunc.max_length = max_length;
        self.tokenizer
            .with_truncation(Some(trunc))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut pad = self.tokenizer.get_padding().cloned().unwrap_or_default();
        pad.strategy = PaddingStrategy::Fixed(max_length);
        self.tokenizer.with_padding(Some(pad));
        self.max_length = max_length;
        Ok(self)
    }

    /// Id of the padding token.
    pub fn pad_id(&self) -> u32 {
        self.tokenizer.get_padding().map_or(0, |p| p.pad_id)
    }

    /// The underlying `tokenizers` tokenizer (truncation and padding configured).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat text for one prompt (one user turn, generation prompt, thinking disabled).
    pub fn render(&self, prompt: &str) -> Result<String> {
        self.template.render_user_prompt(prompt, &self.special)
    }

    /// Renders and tokenises a batch of prompts to `max_length` tokens each.
    pub fn tokenize(&self, prompts: &[String]) -> Result<TokenizedPrompts> {
        let rendered = prompts
            .iter()
            .map(|p| self.render(p))
            .collect::<Result<Vec<_>>>()?;
        let inputs: Vec<&str> = rendered.iter().map(String::as_str).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut input_ids = Vec::with_capacity(encodings.len());
        let mut attention_mask = Vec::with_capacity(encodings.len());
        for enc in &encodings {
            if enc.get_ids().len() != self.max_length {
                return Err(ModelError::Tokenizer(format!(
                    "encoded length {} != {}",
                    enc.get_ids().len(),
                    self.max_length
                )));
            }
            input_ids.push(enc.get_ids().to_vec());
            attention_mask.push(enc.get_attention_mask().to_vec());
        }
        Ok(TokenizedPrompts {
            input_ids,
            attention_mask,
            rendered,
        })
    }
}
