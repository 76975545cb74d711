//! Quality profiles: what `quality: low | medium | high` means for a loaded checkpoint.
//!
//! Distilled checkpoints (klein 4B/9B) always run their 4 distilled steps; quality only caps the
//! output area (low 0.25 MP, medium 1 MP, high 2 MP — `auto` sizes never upscale past the first
//! image, whose prepared size is itself capped at 1024² by the reference rule). Non-distilled
//! ("base") checkpoints also trade steps: low 20, medium 35, high 50 (the reference default).

use super::PipelineDefaults;

/// The `quality` input of the run API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Low,
    Medium,
    High,
}

/// What a quality level resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub max_area: u64,
    pub steps: usize,
}

/// Resolves `quality` for the loaded checkpoint.
pub fn profile(defaults: &PipelineDefaults, quality: Quality) -> Profile {
    let max_area = match quality {
        Quality::Low => 512 * 512,
        Quality::Medium => 1024 * 1024,
        Quality::High => 2 * 1024 * 1024,
    };
    let steps = if defaults.is_distilled {
        defaults.default_steps
    } else {
        match quality {
            Quality::Low => 20,
            Quality::Medium => 35,
            Quality::High => defaults.default_steps.max(50),
        }
    };
    Profile { max_area, steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(is_distilled: bool) -> PipelineDefaults {
        PipelineDefaults {
            model_id: "m".into(),
            is_distilled,
            default_steps: if is_distilled { 4 } else { 50 },
            default_guidance: if is_distilled { 1.0 } else { 4.0 },
        }
    }

    #[test]
    fn distilled_profiles_only_cap_area() {
        let d = defaults(true);
        assert_eq!(
            profile(&d, Quality::Low),
            Profile {
                max_area: 262_144,
                steps: 4
            }
        );
        assert_eq!(profile(&d, Quality::High).steps, 4);
        assert_eq!(profile(&d, Quality::High).max_area, 2_097_152);
    }

    #[test]
    fn base_profiles_trade_steps() {
        let d = defaults(false);
        assert_eq!(profile(&d, Quality::Low).steps, 20);
        assert_eq!(profile(&d, Quality::High).steps, 50);
    }
}
