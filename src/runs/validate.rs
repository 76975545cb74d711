//! Validation of a create-run body into a typed [`EditJob`], once, with every default resolved:
//! every problem is collected as a FastAPI-style `{loc, msg, type}` item; unknown input fields
//! are errors; the seed is drawn when absent; model defaults fill in when the model is loaded.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::job::*;
use super::FieldError;
use crate::pipeline::profiles::Quality;
use crate::pipeline::PipelineDefaults;

/// The non-input parts of a create-run body.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    pub job: EditJob,
    pub callback_url: Option<String>,
    pub metadata: Option<Value>,
    pub client_ref: Option<String>,
}

const INPUT_FIELDS: &[&str] = &[
    "prompt",
    "image_urls",
    "mask_url",
    "num_images",
    "quality",
    "output_format",
    "image_size",
    "sync_mode",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "strength",
    "paste_back",
    "output_compression",
];

struct V {
    errors: Vec<FieldError>,
}

fn loc(path: &[&str]) -> Vec<Value> {
    let mut l = vec![json!("body")];
    l.extend(path.iter().map(|p| json!(p)));
    l
}

impl V {
    fn err(&mut self, path: &[&str], kind: &str, msg: impl Into<String>) {
        self.errors.push(FieldError::new(&loc(path), kind, msg));
    }
    fn err_at(&mut self, path: &[&str], idx: usize, kind: &str, msg: impl Into<String>) {
        let mut l = loc(path);
        l.push(json!(idx));
        self.errors.push(FieldError {
            loc: l,
            msg: msg.into(),
            kind: kind.into(),
        });
    }
    fn opt_string(
        &mut self,
        obj: &Map<String, Value>,
        path: &[&str],
        max: usize,
    ) -> Option<String> {
        match obj.get(*path.last().unwrap()) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() > max => {
                self.err(
                    path,
                    "string_too_long",
                    format!("String should have at most {max} characters"),
                );
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.err(path, "string_type", "Input should be a valid string");
                None
            }
        }
    }
    fn opt_bool(&mut self, obj: &Map<String, Value>, path: &[&str]) -> Option<bool> {
        match obj.get(*path.last().unwrap()) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.err(path, "bool_type", "Input should be a valid boolean");
                None
            }
        }
    }
    fn opt_int(
        &mut self,
        obj: &Map<String, Value>,
        path: &[&str],
        min: u64,
        max: u64,
    ) -> Option<u64> {
        match obj.get(*path.last().unwrap()) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n < min => {
                    self.err(
                        path,
                        "greater_than_equal",
                        format!("Input should be greater than or equal to {min}"),
                    );
                    None
                }
                Some(n) if n > max => {
                    self.err(
                        path,
                        "less_than_equal",
                        format!("Input should be less than or equal to {max}"),
                    );
                    None
                }
                Some(n) => Some(n),
                None => {
                    self.err(
                        path,
                        "int_type",
                        "Input should be a valid non-negative integer",
                    );
                    None
                }
            },
        }
    }
    fn opt_num(
        &mut self,
        obj: &Map<String, Value>,
        path: &[&str],
        min: f64,
        max: f64,
        min_exclusive: bool,
    ) -> Option<f64> {
        match obj.get(*path.last().unwrap()) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(n) if n < min || (min_exclusive && n == min) => {
                    let (kind, rel) = if min_exclusive {
                        ("greater_than", "greater than")
                    } else {
                        ("greater_than_equal", "greater than or equal to")
                    };
                    self.err(path, kind, format!("Input should be {rel} {min}"));
                    None
                }
                Some(n) if n > max => {
                    self.err(
                        path,
                        "less_than_equal",
                        format!("Input should be less than or equal to {max}"),
                    );
                    None
                }
                Some(n) => Some(n),
                None => {
                    self.err(path, "float_type", "Input should be a valid number");
                    None
                }
            },
        }
    }
    fn opt_enum<T: for<'de> Deserialize<'de>>(
        &mut self,
        obj: &Map<String, Value>,
        path: &[&str],
        allowed: &str,
    ) -> Option<T> {
        match obj.get(*path.last().unwrap()) {
            None | Some(Value::Null) => None,
            Some(v) => match serde_json::from_value::<T>(v.clone()) {
                Ok(t) => Some(t),
                Err(_) => {
                    self.err(path, "enum", format!("Input should be {allowed}"));
                    None
                }
            },
        }
    }
}

/// The scheme check every image reference must pass at admission.
fn check_image_url(v: &mut V, path: &[&str], idx: Option<usize>, s: &str) {
    let ok = s.starts_with("https://")
        || s.starts_with("http://")
        || s.starts_with("data:")
        || s.starts_with("runflow://assets/");
    if !ok {
        let msg = "Expected an http(s) URL, a data: URI or runflow://assets/{id}";
        match idx {
            Some(i) => v.err_at(path, i, "url_scheme", msg),
            None => v.err(path, "url_scheme", msg),
        }
    }
}

/// Validates a create-run body. `defaults` are the loaded model's (None while loading);
/// `draw_seed` supplies the seed when the input has none.
pub fn validate_request(
    body: &Value,
    defaults: Option<&PipelineDefaults>,
    draw_seed: impl FnOnce() -> u64,
) -> Result<RunRequest, Vec<FieldError>> {
    let mut v = V { errors: Vec::new() };
    let Some(top) = body.as_object() else {
        v.err(
            &[],
            "model_attributes_type",
            "Input should be a JSON object",
        );
        return Err(v.errors);
    };
    let callback_url = v.opt_string(top, &["callback_url"], MAX_CALLBACK_URL);
    if let Some(u) = &callback_url {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            v.err(
                &["callback_url"],
                "url_scheme",
                "callback_url must be an http(s) URL",
            );
        }
    }
    let client_ref = v.opt_string(top, &["client_ref"], MAX_CLIENT_REF);
    let metadata = match top.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(_) => {
            v.err(
                &["metadata"],
                "dict_type",
                "Input should be a valid dictionary",
            );
            None
        }
    };
    let input = match top.get("input") {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => {
            v.err(&["input"], "missing", "Field required");
            return Err(v.errors);
        }
        Some(_) => {
            v.err(
                &["input"],
                "dict_type",
                "Input should be a valid dictionary",
            );
            return Err(v.errors);
        }
    };
    for k in input.keys() {
        if !INPUT_FIELDS.contains(&k.as_str()) {
            v.err(
                &["input", k],
                "extra_forbidden",
                "Extra inputs are not permitted",
            );
        }
    }
    let prompt = match input.get("prompt") {
        None | Some(Value::Null) => {
            v.err(&["input", "prompt"], "missing", "Field required");
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            v.err(
                &["input", "prompt"],
                "string_too_short",
                "String should have at least 1 character",
            );
            None
        }
        Some(Value::String(s)) if s.chars().count() > MAX_PROMPT_CHARS => {
            v.err(
                &["input", "prompt"],
                "string_too_long",
                format!("String should have at most {MAX_PROMPT_CHARS} characters"),
            );
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            v.err(
                &["input", "prompt"],
                "string_type",
                "Input should be a valid string",
            );
            None
        }
    };
    let image_urls = match input.get("image_urls") {
        None | Some(Value::Null) => {
            v.err(&["input", "image_urls"], "missing", "Field required");
            None
        }
        Some(Value::Array(a)) if a.is_empty() || a.len() > MAX_IMAGES => {
            let kind = if a.is_empty() {
                "too_short"
            } else {
                "too_long"
            };
            v.err(
                &["input", "image_urls"],
                kind,
                format!("List should have 1 to {MAX_IMAGES} items"),
            );
            None
        }
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, item) in a.iter().enumerate() {
                match item.as_str() {
                    Some(s) => {
                        check_image_url(&mut v, &["input", "image_urls"], Some(i), s);
                        out.push(s.to_string());
                    }
                    None => v.err_at(
                        &["input", "image_urls"],
                        i,
                        "string_type",
                        "Input should be a valid string",
                    ),
                }
            }
            Some(out)
        }
        Some(_) => {
            v.err(
                &["input", "image_urls"],
                "list_type",
                "Input should be a valid list",
            );
            None
        }
    };
    let mask_url = v.opt_string(input, &["input", "mask_url"], usize::MAX);
    if let Some(m) = &mask_url {
        check_image_url(&mut v, &["input", "mask_url"], None, m);
    }
    let num_images = v
        .opt_int(input, &["input", "num_images"], 1, MAX_NUM_IMAGES)
        .unwrap_or(1) as u32;
    let quality = v
        .opt_enum(input, &["input", "quality"], "'low', 'medium' or 'high'")
        .unwrap_or(Quality::High);
    let output_format = v
        .opt_enum(
            input,
            &["input", "output_format"],
            "'png', 'jpeg' or 'webp'",
        )
        .unwrap_or(OutputFormatName::Png);
    let image_size = match input.get("image_size") {
        None | Some(Value::Null) => ImageSize::Auto,
        Some(s) => parse_size(s).unwrap_or_else(|(kind, msg)| {
            v.err(&["input", "image_size"], kind, msg);
            ImageSize::Auto
        }),
    };
    let sync_mode = v.opt_bool(input, &["input", "sync_mode"]).unwrap_or(false);
    let seed = v.opt_int(input, &["input", "seed"], 0, u64::MAX);
    let steps = v
        .opt_int(input, &["input", "num_inference_steps"], 1, MAX_STEPS)
        .map(|n| n as u32);
    let guidance = v
        .opt_num(
            input,
            &["input", "guidance_scale"],
            0.0,
            MAX_GUIDANCE,
            false,
        )
        .map(|g| g as f32);
    let strength = v
        .opt_num(input, &["input", "strength"], 0.0, 1.0, true)
        .map(|s| s as f32)
        .unwrap_or(1.0);
    let paste_back = v.opt_bool(input, &["input", "paste_back"]).unwrap_or(true);
    let output_compression = v
        .opt_int(input, &["input", "output_compression"], 0, 100)
        .map(|c| c as u8);

    if !v.errors.is_empty() {
        return Err(v.errors);
    }
    let (Some(prompt), Some(image_urls)) = (prompt, image_urls) else {
        return Err(v.errors);
    };
    let mut job = EditJob {
        prompt,
        image_urls,
        mask_url,
        num_images,
        quality,
        output_format,
        image_size,
        sync_mode,
        seed: seed.unwrap_or_else(draw_seed),
        num_inference_steps: steps,
        guidance_scale: guidance,
        strength,
        paste_back,
        output_compression,
    };
    if let Some(d) = defaults {
        job.resolve_defaults(d);
    }
    Ok(RunRequest {
        job,
        callback_url,
        metadata,
        client_ref,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> PipelineDefaults {
        PipelineDefaults {
            model_id: "m".into(),
            is_distilled: true,
            default_steps: 4,
            default_guidance: 1.0,
        }
    }

    #[test]
    fn resolves_every_default() {
        let body = json!({"input": {"prompt": "p", "image_urls": ["https://x/a.png"]}});
        let r = validate_request(&body, Some(&defaults()), || 7).unwrap();
        let j = r.job;
        assert_eq!(
            (j.num_images, j.quality, j.output_format),
            (1, Quality::High, OutputFormatName::Png)
        );
        assert_eq!(
            (j.seed, j.num_inference_steps, j.guidance_scale, j.strength),
            (7, Some(4), Some(1.0), 1.0)
        );
        assert_eq!(j.image_size, ImageSize::Auto);
    }

    #[test]
    fn presets_and_rounding() {
        let body = json!({"input": {"prompt": "p", "image_urls": ["data:image/png;base64,AA"], "image_size": "portrait_16_9"}});
        let j = validate_request(&body, None, || 0).unwrap().job;
        assert_eq!(
            j.image_size,
            ImageSize::Explicit {
                width: 576,
                height: 1024
            }
        );
        let body = json!({"input": {"prompt": "p", "image_urls": ["data:x"], "image_size": {"width": 1000, "height": 700}}});
        let j = validate_request(&body, None, || 0).unwrap().job;
        assert_eq!(
            j.image_size,
            ImageSize::Explicit {
                width: 1008,
                height: 704
            }
        );
        assert_eq!(j.num_inference_steps, None);
    }

    #[test]
    fn collects_all_errors_with_locations() {
        let body = json!({"input": {"prompt": "", "image_urls": ["ftp://x"], "num_images": 9, "bogus": 1, "quality": "ultra"}});
        let errs = validate_request(&body, None, || 0).unwrap_err();
        let locs: Vec<String> = errs
            .iter()
            .map(|e| serde_json::to_string(&e.loc).unwrap())
            .collect();
        for want in [
            r#"["body","input","bogus"]"#,
            r#"["body","input","prompt"]"#,
            r#"["body","input","image_urls",0]"#,
            r#"["body","input","num_images"]"#,
            r#"["body","input","quality"]"#,
        ] {
            assert!(locs.iter().any(|l| l == want), "{want} not in {locs:?}");
        }
    }

    #[test]
    fn echo_round_trips() {
        let body = json!({"input": {"prompt": "p", "image_urls": ["https://x"], "image_size": "square", "seed": 3}});
        let j = validate_request(&body, Some(&defaults()), || 0)
            .unwrap()
            .job;
        let back: EditJob = serde_json::from_value(j.to_echo()).unwrap();
        assert_eq!(back, j);
    }
}
