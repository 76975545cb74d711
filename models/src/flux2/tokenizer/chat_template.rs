//! Renders a Hugging Face chat template (Jinja) with minijinja the way transformers does.
//!
//! Follows transformers `utils/chat_template_utils.py` (`_compile_jinja_template`,
//! `render_jinja_template`): a Jinja environment with `trim_blocks` and `lstrip_blocks`, loop
//! controls, a `tojson` filter that writes like Python's `json.dumps(ensure_ascii=False)`, a
//! `raise_exception` global, and — since the templates are Python Jinja — the Python string and
//! dict methods they call (`startswith`, `split`, `lstrip`, `items`, …), provided here through
//! minijinja's unknown-method callback instead of an extra crate.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

use crate::{ModelError, Result};

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(python_method);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| ModelError::Tokenizer(format!("chat template does not compile: {e:#}")))?;
        Ok(Self { env })
    }

    /// Renders one user turn followed by the generation prompt, thinking disabled, as
    /// `tokenizer.apply_chat_template([{"role":"user","content":prompt}], tokenize=False,
    /// add_generation_prompt=True, enable_thinking=False)` does. `special` are the
    /// tokenizer's special tokens (`eos_token`, `pad_token`, …) passed as template variables.
    pub fn render_user_prompt(&self, prompt: &str, special: &[(String, String)]) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ctx: Vec<(String, Value)> = special
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let msg = Value::from_iter([
            ("role", Value::from("user")),
            ("content", Value::from(prompt)),
        ]);
        ctx.push(("messages".into(), Value::from(vec![msg])));
        ctx.push(("tools".into(), Value::from(())));
        ctx.push(("documents".into(), Value::from(())));
        ctx.push(("add_generation_prompt".into(), Value::from(true)));
        ctx.push(("enable_thinking".into(), Value::from(false)));
        let ctx = Value::from_iter(ctx);
        tmpl.render(ctx)
            .map_err(|e| ModelError::Tokenizer(format!("chat template render failed: {e:#}")))
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Python `json.dumps` layout: `", "`/`": "` separators without indent, newlines with it.
fn write_py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn strip_chars(args: &[Value]) -> std::result::Result<Option<String>, Error> {
    match args.first() {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => Ok(Some(v.as_str().map(str::to_string).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                "strip argument must be a string",
            )
        })?)),
    }
}

fn py_strip(s: &str, chars: Option<&str>, left: bool, right: bool) -> String {
    let pred = |c: char| match chars {
        Some(set) => set.contains(c),
        None => c.is_whitespace(),
    };
    let mut t = s;
    if left {
        t = t.trim_start_matches(pred);
    }
    if right {
        t = t.trim_end_matches(pred);
    }
    t.to_string()
}

fn py_split(s: &str, args: &[Value]) -> std::result::Result<Value, Error> {
    let sep = args.first().filter(|v| !v.is_none()).map(|v| v.to_string());
    let maxsplit = match args.get(1) {
        Some(v) => i64::try_from(v.clone())?,
        None => -1,
    };
    let limit = if maxsplit < 0 {
        usize::MAX
    } else {
        maxsplit as usize + 1
    };
    let parts: Vec<Value> = match sep {
        Some(sep) if sep.is_empty() => {
            return Err(Error::new(ErrorKind::InvalidOperation, "empty separator"))
        }
        Some(sep) => s.splitn(limit, sep.as_str()).map(Value::from).collect(),
        None => {
            let mut out = Vec::new();
            let mut rest = s.trim_start();
            while !rest.is_empty() {
                if out.len() + 1 == limit {
                    out.push(Value::from(rest));
                    break;
                }
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                out.push(Value::from(&rest[..end]));
                rest = rest[end..].trim_start();
            }
            out
        }
    };
    Ok(Value::from(parts))
}

fn arg_str(args: &[Value], i: usize, method: &str) -> std::result::Result<String, Error> {
    args.get(i)
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::MissingArgument,
                format!("{method}: string argument"),
            )
        })
}

/// The Python methods chat templates call on strings and dicts.
fn python_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let v = match method {
            "startswith" | "endswith" => {
                let pats: Vec<String> = match args.first() {
                    Some(p) if p.kind() == ValueKind::Seq => {
                        p.try_iter()?.map(|x| x.to_string()).collect()
                    }
                    _ => vec![arg_str(args, 0, method)?],
                };
                let hit = pats.iter().any(|p| {
                    if method == "startswith" {
                        s.starts_with(p.as_str())
                    } else {
                        s.ends_with(p.as_str())
                    }
                });
                Value::from(hit)
            }
            "strip" => Value::from(py_strip(s, strip_chars(args)?.as_deref(), true, true)),
            "lstrip" => Value::from(py_strip(s, strip_chars(args)?.as_deref(), true, false)),
            "rstrip" => Value::from(py_strip(s, strip_chars(args)?.as_deref(), false, true)),
            "split" => py_split(s, args)?,
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "replace" => {
                Value::from(s.replace(&arg_str(args, 0, method)?, &arg_str(args, 1, method)?))
            }
            "find" => {
                let needle = arg_str(args, 0, method)?;
                Value::from(
                    s.find(&needle)
                        .map(|b| s[..b].chars().count() as i64)
                        .unwrap_or(-1),
                )
            }
            "count" => Value::from(s.matches(&arg_str(args, 0, method)?).count()),
            "isdigit" => Value::from(!s.is_empty() && s.chars().all(|c| c.is_ascii_digit())),
            "isspace" => Value::from(!s.is_empty() && s.chars().all(char::is_whitespace)),
            _ => return Err(Error::from(ErrorKind::UnknownMethod)),
        };
        return Ok(v);
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "get" => {
                let key = args
                    .first()
                    .ok_or_else(|| Error::new(ErrorKind::MissingArgument, "get: key"))?;
                let found = value.get_item(key)?;
                Ok(if found.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    found
                })
            }
            "items" => {
                let mut out = Vec::new();
                for k in value.try_iter()? {
                    let v = value.get_item(&k)?;
                    out.push(Value::from(vec![k, v]));
                }
                Ok(Value::from(out))
            }
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let vals = value
                    .try_iter()?
                    .map(|k| value.get_item(&k))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(Value::from(vals))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_string_methods_render() {
        let t = ChatTemplate::new(
            "{{ '\\n\\nab</think>\\n\\ncd'.split('</think>')|last|trim }}|{{ 'xx'.startswith('x') }}|\
             {{ '\\nq\\n'.lstrip('\\n') }}|{{ {'a': 1}|tojson }}|{{ [1, 'é']|tojson }}",
        )
        .unwrap();
        let out = t.render_user_prompt("p", &[]).unwrap();
        assert_eq!(out, "cd|True|q\n|{\"a\": 1}|[1, \"é\"]");
    }

    #[test]
    fn renders_generation_prompt_with_thinking_disabled() {
        let src = "{%- for message in messages[::-1] %}{%- endfor %}\n\
            {%- for message in messages %}\n    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n{%- endfor %}\n\
            {%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n\
            {%- if enable_thinking is defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}\n";
        let t = ChatTemplate::new(src).unwrap();
        let out = t.render_user_prompt("a cat", &[]).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
    }
}
