//! Command-line and environment configuration (clap). The only place that reads the environment.
//!
//! Every flag is `--long` and has an `EDITD_*` environment variable; the doc comments are the
//! `--help` text. [`ServeArgs`] is validated once into [`ServeConfig`], which the rest of the
//! crate (and the in-process tests) consume.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The model served when `--model` is not given.
pub const DEFAULT_MODEL: &str = "black-forest-labs/FLUX.2-klein-4B";
/// The alias every editd answers under unless `--model-alias` says otherwise.
pub const DEFAULT_ALIAS: &str = "openai/gpt-image-2/edit";

/// editd: local GPU inference server for open image-edit models.
#[derive(Debug, Parser)]
#[command(name = "editd", version, about)]
pub struct Cli {
    /// Log filter for stderr (tracing `EnvFilter` syntax), e.g. `info` or `editd=debug,warn`.
    #[arg(long, env = "EDITD_LOG", default_value = "info", global = true)]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of the `editd` binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the HTTP server (Runflow-compatible run API) in front of one edit model.
    Serve(ServeArgs),
    /// Print the OpenAPI document of the HTTP API.
    PrintOpenapi,
    /// Edit (or generate) one image from the command line, without a server.
    Edit(EditArgs),
}

/// Flags of `editd serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model to serve: a Hugging Face hub repo id or a local diffusers-layout directory.
    #[arg(long, env = "EDITD_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    /// Public model id the runs API answers under (default: the hub id, or the directory name
    /// of a local model).
    #[arg(long, env = "EDITD_MODEL_ID")]
    pub model_id: Option<String>,

    /// Extra model ids accepted in `POST /v1/models/{model_id}/runs` (repeatable; comma-separated
    /// in the environment).
    #[arg(long = "model-alias", env = "EDITD_MODEL_ALIASES", value_delimiter = ',', default_value = DEFAULT_ALIAS)]
    pub model_aliases: Vec<String>,

    /// Address to bind.
    #[arg(long, env = "EDITD_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to bind; 0 picks a free port (read it from the `editd listening on` line).
    #[arg(long, env = "EDITD_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Directory for the run database, uploaded assets, outputs, the key hashes and the URL
    /// signing secret. Created if missing.
    #[arg(long, env = "EDITD_DATA_DIR", default_value = "./editd-data")]
    pub data_dir: PathBuf,

    /// Base URL clients reach this server at (used for absolute output and upload URLs), e.g.
    /// `https://edit.example.com`. Default: `http://HOST:PORT` as bound.
    #[arg(long, env = "EDITD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// API key accepted as `Authorization: Bearer <key>` (repeatable; comma-separated in the
    /// environment). Keys must match `^[a-z0-9_]+$`. With none, the first start generates one,
    /// stores only its SHA-256 under the data dir and prints it once.
    #[arg(
        long = "api-key",
        env = "EDITD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Device to run the model on: `auto`, `cpu`, `cuda:N` or `metal`.
    #[arg(long, env = "EDITD_DEVICE", default_value = "auto")]
    pub device: String,

    /// Never touch the network: hub ids resolve from the local Hugging Face cache only.
    #[arg(long, env = "EDITD_OFFLINE")]
    pub offline: bool,

    /// Weight dtype override (`bf16`, `f16`, `f32`); default: the model's choice for the device.
    #[arg(long, env = "EDITD_DTYPE")]
    pub dtype: Option<String>,

    /// Most runs waiting in `queued`; past it, new runs are refused with 429 `QUEUE_FULL`.
    #[arg(long, env = "EDITD_MAX_QUEUE", default_value_t = 1000)]
    pub max_queue: u64,

    /// Times a run may be started; a run found `running` after a crash is re-queued until this
    /// many attempts, then fails with `ATTEMPTS_EXHAUSTED`.
    #[arg(long, env = "EDITD_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// Seconds the current run may take to finish after SIGTERM before the process exits
    /// anyway (the run is then re-queued at the next start).
    #[arg(long, env = "EDITD_SHUTDOWN_TIMEOUT_SECS", default_value_t = 60)]
    pub shutdown_timeout_secs: u64,

    /// Lifetime in seconds of signed output and upload URLs.
    #[arg(long, env = "EDITD_URL_TTL_SECS", default_value_t = 86_400)]
    pub url_ttl_secs: u64,

    /// Let `image_urls` point at private, loopback and link-local addresses (LAN setups).
    /// Cloud metadata endpoints stay refused.
    #[arg(long, env = "EDITD_ALLOW_PRIVATE_NETWORKS")]
    pub allow_private_networks: bool,

    /// Accept plain `http://` image URLs (default: `https://` only).
    #[arg(long, env = "EDITD_ALLOW_HTTP_IMAGE_URLS")]
    pub allow_http_image_urls: bool,

    /// Allow image and callback URLs in this network only (repeatable CIDR, e.g. 10.0.5.0/24;
    /// comma-separated in the environment): a narrower alternative to `--allow-private-networks`.
    #[arg(long = "allow-cidr", env = "EDITD_ALLOW_CIDRS", value_delimiter = ',')]
    pub allow_cidrs: Vec<ipnet::IpNet>,

    /// Accept plain `http://` `callback_url`s (default: `https://` only). Private addresses
    /// also need `--allow-private-networks`.
    #[arg(long, env = "EDITD_ALLOW_HTTP_CALLBACKS")]
    pub allow_http_callbacks: bool,

    /// Callback retry base in milliseconds: the delay after attempt n is at most
    /// base·2^(n-1) (capped), jittered into its upper half; a longer `Retry-After` wins.
    #[arg(long, env = "EDITD_CALLBACK_RETRY_BASE_MS", default_value_t = 30_000)]
    pub callback_retry_base_ms: u64,

    /// Longest delay between two callback attempts, in milliseconds.
    #[arg(long, env = "EDITD_CALLBACK_RETRY_CAP_MS", default_value_t = 7_200_000)]
    pub callback_retry_cap_ms: u64,

    /// Attempts per callback delivery before it fails with `ATTEMPTS_EXHAUSTED`.
    #[arg(long, env = "EDITD_CALLBACK_MAX_ATTEMPTS", default_value_t = 6)]
    pub callback_max_attempts: u32,
}

/// Errors found while validating the flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --api-key: keys must be non-empty and match ^[a-z0-9_]+$")]
    BadApiKey,
    #[error("invalid --device {0:?}: expected auto, cpu, cuda:N or metal")]
    BadDevice(String),
    #[error("invalid --public-url {0:?}: expected an absolute http(s) URL")]
    BadPublicUrl(String),
    #[error("invalid --{0}: {1}")]
    BadValue(&'static str, String),
}

/// Validated configuration of `editd serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: String,
    /// Id the model answers under (first) plus aliases.
    pub model_id: String,
    pub model_aliases: Vec<String>,
    pub host: IpAddr,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Without trailing slash.
    pub public_url: Option<String>,
    pub api_keys: Vec<String>,
    pub device: String,
    pub dtype: Option<String>,
    pub offline: bool,
    pub max_queue: u64,
    pub max_attempts: u32,
    pub shutdown_timeout: Duration,
    pub url_ttl: Duration,
    pub allow_private_networks: bool,
    pub allow_http_image_urls: bool,
    pub allow_cidrs: Vec<ipnet::IpNet>,
    pub allow_http_callbacks: bool,
    pub callback_retry_base: Duration,
    pub callback_retry_cap: Duration,
    pub callback_max_attempts: u32,
}

impl ServeConfig {
    /// A config with every default, serving `model` from `data_dir` on 127.0.0.1 and a free port
    /// (what the in-process tests start from).
    pub fn new(model: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        let model = model.into();
        ServeConfig {
            model_id: default_model_id(&model),
            model,
            model_aliases: vec![DEFAULT_ALIAS.to_string()],
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            data_dir: data_dir.into(),
            public_url: None,
            api_keys: Vec::new(),
            device: "auto".into(),
            dtype: None,
            offline: false,
            max_queue: 1000,
            max_attempts: 3,
            shutdown_timeout: Duration::from_secs(60),
            url_ttl: Duration::from_secs(86_400),
            allow_private_networks: false,
            allow_http_image_urls: false,
            allow_cidrs: Vec::new(),
            allow_http_callbacks: false,
            callback_retry_base: Duration::from_secs(30),
            callback_retry_cap: Duration::from_secs(7200),
            callback_max_attempts: 6,
        }
    }
}

impl TryFrom<ServeArgs> for ServeConfig {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        for k in &a.api_keys {
            if !valid_api_key(k) {
                return Err(ConfigError::BadApiKey);
            }
        }
        if !valid_device(&a.device) {
            return Err(ConfigError::BadDevice(a.device));
        }
        let public_url = match a.public_url {
            None => None,
            Some(u) => {
                let t = u.trim_end_matches('/');
                if !(t.starts_with("http://") || t.starts_with("https://"))
                    || t.contains(char::is_whitespace)
                {
                    return Err(ConfigError::BadPublicUrl(u));
                }
                Some(t.to_string())
            }
        };
        if a.max_queue == 0 {
            return Err(ConfigError::BadValue(
                "max-queue",
                "must be at least 1".into(),
            ));
        }
        if a.max_attempts == 0 {
            return Err(ConfigError::BadValue(
                "max-attempts",
                "must be at least 1".into(),
            ));
        }
        if a.url_ttl_secs == 0 {
            return Err(ConfigError::BadValue(
                "url-ttl-secs",
                "must be at least 1".into(),
            ));
        }
        if a.callback_max_attempts == 0 {
            return Err(ConfigError::BadValue(
                "callback-max-attempts",
                "must be at least 1".into(),
            ));
        }
        let model_id = a.model_id.unwrap_or_else(|| default_model_id(&a.model));
        if model_id.is_empty() {
            return Err(ConfigError::BadValue(
                "model-id",
                "must not be empty".into(),
            ));
        }
        Ok(ServeConfig {
            model: a.model,
            model_id,
            model_aliases: a
                .model_aliases
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect(),
            host: a.host,
            port: a.port,
            data_dir: a.data_dir,
            public_url,
            api_keys: a.api_keys,
            device: a.device,
            dtype: a.dtype,
            offline: a.offline,
            max_queue: a.max_queue,
            max_attempts: a.max_attempts,
            shutdown_timeout: Duration::from_secs(a.shutdown_timeout_secs),
            url_ttl: Duration::from_secs(a.url_ttl_secs),
            allow_private_networks: a.allow_private_networks,
            allow_http_image_urls: a.allow_http_image_urls,
            allow_cidrs: a.allow_cidrs,
            allow_http_callbacks: a.allow_http_callbacks,
            callback_retry_base: Duration::from_millis(a.callback_retry_base_ms),
            callback_retry_cap: Duration::from_millis(a.callback_retry_cap_ms),
            callback_max_attempts: a.callback_max_attempts,
        })
    }
}

/// `^[a-z0-9_]+$` (case-insensitive), what Runflow's SDK accepts.
pub fn valid_api_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_device(d: &str) -> bool {
    match d {
        "auto" | "cpu" | "metal" | "cuda" => true,
        _ => d
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    }
}

/// A hub id answers under itself; a local directory under its last path component.
fn default_model_id(model: &str) -> String {
    let p = std::path::Path::new(model);
    let looks_local =
        model.starts_with('/') || model.starts_with('.') || model.starts_with('~') || p.exists();
    if looks_local {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| model.to_string())
    } else {
        model.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_follow_the_sdk_pattern() {
        assert!(valid_api_key("editd_0123abc"));
        assert!(!valid_api_key("editd-key"));
        assert!(!valid_api_key(""));
    }

    #[test]
    fn serve_flags_validate_into_a_config() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Serve(a) => ServeConfig::try_from(a),
            _ => unreachable!(),
        };
        let cfg = parse(&[
            "editd",
            "serve",
            "--port",
            "0",
            "--api-key",
            "editd_a",
            "--api-key",
            "editd_b",
            "--public-url",
            "https://x.example/",
        ])
        .unwrap();
        assert_eq!(cfg.api_keys, ["editd_a", "editd_b"]);
        assert_eq!(cfg.public_url.as_deref(), Some("https://x.example"));
        assert_eq!(cfg.model_id, DEFAULT_MODEL);
        assert_eq!(cfg.model_aliases, [DEFAULT_ALIAS]);
        assert!(matches!(
            parse(&["editd", "serve", "--api-key", "has-dash"]),
            Err(ConfigError::BadApiKey)
        ));
        assert!(matches!(
            parse(&["editd", "serve", "--device", "gpu"]),
            Err(ConfigError::BadDevice(_))
        ));
        assert!(matches!(
            parse(&["editd", "serve", "--public-url", "ftp://x"]),
            Err(ConfigError::BadPublicUrl(_))
        ));
        let cfg = parse(&[
            "editd",
            "serve",
            "--allow-cidr",
            "10.0.5.0/24",
            "--allow-cidr",
            "fd00::/8",
        ])
        .unwrap();
        assert_eq!(cfg.allow_cidrs.len(), 2);
        assert!(cfg.allow_cidrs[0].contains(&"10.0.5.9".parse::<std::net::IpAddr>().unwrap()));
        assert!(Cli::try_parse_from(["editd", "serve", "--allow-cidr", "10.0.5.0/99"]).is_err());
    }

    #[test]
    fn devices() {
        for d in ["auto", "cpu", "cuda:0", "cuda:12", "metal"] {
            assert!(valid_device(d), "{d}");
        }
        for d in ["gpu", "cuda:", "cuda:x"] {
            assert!(!valid_device(d), "{d}");
        }
    }

    #[test]
    fn model_ids() {
        assert_eq!(
            default_model_id("black-forest-labs/FLUX.2-klein-4B"),
            "black-forest-labs/FLUX.2-klein-4B"
        );
        assert_eq!(default_model_id("/models/klein/"), "klein");
    }
}

/// `editd edit`: one-shot editing from the command line (same pipeline, no server).
#[derive(Debug, Clone, clap::Args)]
pub struct EditArgs {
    /// Model: a local diffusers-layout directory or a Hugging Face hub repo id.
    #[arg(long, env = "EDITD_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// The edit instruction or description of the output.
    #[arg(long)]
    pub prompt: String,
    /// Input image (repeatable). With `--mask`, the first is edited and the rest are references.
    /// None: text-to-image.
    #[arg(long = "image")]
    pub images: Vec<std::path::PathBuf>,
    /// Inpainting mask (same size as the first image): white, or transparent, = repaint.
    #[arg(long)]
    pub mask: Option<std::path::PathBuf>,
    /// Output width in pixels (rounded down to a multiple of 16).
    #[arg(long)]
    pub width: Option<u32>,
    /// Output height in pixels (rounded down to a multiple of 16).
    #[arg(long)]
    pub height: Option<u32>,
    /// Denoising steps (default: the checkpoint's, 4 for distilled klein).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (ignored by distilled checkpoints).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Inpainting strength in (0, 1]; 1 starts from pure noise.
    #[arg(long, default_value_t = 1.0)]
    pub strength: f32,
    /// Seed of the initial noise (random if absent; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// safetensors file with tensor `noise` of shape (1, 128, H/16, W/16) used instead of the RNG.
    #[arg(long)]
    pub noise: Option<std::path::PathBuf>,
    /// Paste the source back outside the mask (feathered inside its edge); `off` gives the
    /// reference pipeline's raw output.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub paste_back: OnOff,
    /// Device: auto, cpu, cuda:N or metal.
    #[arg(long, env = "EDITD_DEVICE", default_value = "auto")]
    pub device: String,
    /// Weights dtype: f32, bf16 or f16 (default f32 on CPU, bf16 on GPU).
    #[arg(long, env = "EDITD_DTYPE")]
    pub dtype: Option<String>,
    /// Resolve hub ids from the local Hugging Face cache only, never the network.
    #[arg(long, env = "HF_HUB_OFFLINE")]
    pub offline: bool,
    /// Output file; the format follows the extension (png, jpg/jpeg, webp).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Also write the final latents (tensor `latents`, (1, 128, H/16, W/16), normalised space).
    #[arg(long)]
    pub latents_out: Option<std::path::PathBuf>,
}

/// A boolean flag spelled `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}
