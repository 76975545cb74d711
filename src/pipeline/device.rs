//! Device and dtype selection: `auto | cpu | cuda[:N] | metal`, `f32 | bf16 | f16`.

use candle_core::{DType, Device};

use super::PipelineError;

/// Parses a device spec. `auto` picks CUDA device 0, then Metal, then the CPU, depending on
/// what this binary was built with (`--features cuda` / `metal`).
pub fn parse_device(spec: &str) -> Result<Device, PipelineError> {
    let spec = spec.trim().to_ascii_lowercase();
    let load = |e: candle_core::Error| PipelineError::Load(format!("device `{spec}`: {e}"));
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).map_err(load)
            } else if candle_core::utils::metal_is_available() {
                Device::new_metal(0).map_err(load)
            } else {
                Ok(Device::Cpu)
            }
        }
        "metal" => Device::new_metal(0).map_err(load),
        "cuda" => Device::new_cuda(0).map_err(load),
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..].parse().map_err(|_| {
                PipelineError::Load(format!("device `{s}`: expected cuda:N with N a GPU index"))
            })?;
            Device::new_cuda(n).map_err(load)
        }
        s => Err(PipelineError::Load(format!(
            "device `{s}`: expected auto, cpu, cuda, cuda:N or metal"
        ))),
    }
}

/// Parses a dtype name; `None` picks f32 on the CPU and bf16 on a GPU.
pub fn parse_dtype(spec: Option<&str>, device: &Device) -> Result<DType, PipelineError> {
    match spec.map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        }),
        Some(s) => match s.as_str() {
            "f32" => Ok(DType::F32),
            "bf16" => Ok(DType::BF16),
            "f16" => Ok(DType::F16),
            _ => Err(PipelineError::Load(format!(
                "dtype `{s}`: expected f32, bf16 or f16"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_bad_specs() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("CPU").unwrap().is_cpu());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_dtype(None, &Device::Cpu).unwrap(), DType::F32);
        assert_eq!(
            parse_dtype(Some("bf16"), &Device::Cpu).unwrap(),
            DType::BF16
        );
        assert!(parse_dtype(Some("f8"), &Device::Cpu).is_err());
    }
}
