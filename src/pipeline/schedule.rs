//! Flow-matching schedule of the FLUX.2 klein pipelines: empirical `mu`, exponential time shift,
//! and the inpainting strength trim.
//!
//! Follows diffusers 0.42.1 `pipelines/flux2/pipeline_flux2_klein.py` (`compute_empirical_mu`,
//! the `np.linspace(1.0, 1/N, N)` sigmas) and `schedulers/scheduling_flow_match_euler_discrete.py`
//! (`set_timesteps` with `use_dynamic_shifting`, `time_shift_type = "exponential"`), including the
//! precision of each step: `mu` in f64, the linspace in f64 cast to f32, the shift in f32 (NumPy
//! keeps f32 arrays f32 when combined with Python floats), timesteps `σ·1000` in f32.

/// `compute_empirical_mu(image_seq_len, num_steps)` (f64, as Python floats).
pub fn empirical_mu(image_seq_len: usize, num_steps: usize) -> f64 {
    let (a1, b1) = (8.738_095_24e-05_f64, 1.898_333_33_f64);
    let (a2, b2) = (0.000_169_27_f64, 0.456_666_66_f64);
    let l = image_seq_len as f64;
    if image_seq_len > 4300 {
        return a2 * l + b2;
    }
    let m_200 = a2 * l + b2;
    let m_10 = a1 * l + b1;
    let a = (m_200 - m_10) / 190.0;
    let b = m_200 - 200.0 * a;
    a * num_steps as f64 + b
}

/// The full schedule for `num_steps` steps: `sigmas` has `num_steps + 1` entries ending in 0;
/// `timesteps[i] = sigmas[i]·1000` (f32) for the `num_steps` steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub sigmas: Vec<f32>,
    pub timesteps: Vec<f32>,
    pub mu: f64,
}

impl Schedule {
    /// Schedule for a target of `image_seq_len` tokens.
    pub fn new(image_seq_len: usize, num_steps: usize) -> Self {
        assert!(num_steps >= 1, "num_steps must be >= 1");
        let mu = empirical_mu(image_seq_len, num_steps);
        let n = num_steps;
        // np.linspace(1.0, 1/N, N) in f64, then cast to f32.
        let start = 1.0_f64;
        let stop = 1.0_f64 / n as f64;
        let lin: Vec<f32> = (0..n)
            .map(|i| {
                if n == 1 {
                    start as f32
                } else if i == n - 1 {
                    stop as f32
                } else {
                    let step = (stop - start) / (n - 1) as f64;
                    (start + i as f64 * step) as f32
                }
            })
            .collect();
        // time_shift exponential with sigma = 1.0, in f32.
        let em = mu.exp() as f32;
        let mut sigmas: Vec<f32> = lin
            .iter()
            .map(|&t| em / (em + (1.0_f32 / t - 1.0_f32)))
            .collect();
        let timesteps = sigmas.iter().map(|s| s * 1000.0_f32).collect();
        sigmas.push(0.0);
        Self {
            sigmas,
            timesteps,
            mu,
        }
    }

    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The value the pipeline passes to the transformer at step `i`: `f32(σ_i·1000) / 1000`.
    pub fn model_timestep(&self, i: usize) -> f32 {
        self.timesteps[i] / 1000.0_f32
    }
}

/// First step run by the inpaint pipeline for `strength` (truncation, as diffusers'
/// `get_timesteps`): `int(max(N − min(N·strength, N), 0))`.
///
/// `strength` is widened through its shortest decimal form, so a user's `0.3` is the Python
/// float `0.3` (widening the f32 bits directly would give 0.30000001 and trim one step less).
pub fn inpaint_start_step(num_steps: usize, strength: f32) -> usize {
    let n = num_steps as f64;
    let strength: f64 = strength.to_string().parse().unwrap_or(strength as f64);
    let init = (n * strength).min(n);
    (n - init).max(0.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sigmas_match_the_reference_table() {
        // shared/reference/flux2-klein.md §3.4 (values printed to 6 decimals).
        let s = Schedule::new(4096, 4);
        assert!((s.mu - 2.291180).abs() < 1e-5, "mu {}", s.mu);
        close(&s.sigmas, &[1.0, 0.967384, 0.908144, 0.767200, 0.0], 2e-6);
        let s = Schedule::new(1024, 4);
        assert!((s.mu - 2.030690).abs() < 1e-5);
        close(&s.sigmas, &[1.0, 0.958085, 0.883982, 0.717497, 0.0], 2e-6);
        let s = Schedule::new(3072, 4);
        assert!((s.mu - 2.204350).abs() < 1e-5);
        close(&s.sigmas, &[1.0, 0.964530, 0.900639, 0.751334, 0.0], 2e-6);
        assert!((Schedule::new(4096, 50).mu - 2.023351).abs() < 1e-5);
    }

    #[test]
    fn long_sequences_use_the_linear_mu() {
        assert!((empirical_mu(8192, 4) - (0.00016927 * 8192.0 + 0.45666666)).abs() < 1e-9);
    }

    #[test]
    fn strength_trims_by_truncation() {
        assert_eq!(inpaint_start_step(4, 1.0), 0);
        assert_eq!(inpaint_start_step(4, 0.75), 1);
        assert_eq!(inpaint_start_step(4, 0.6), 1);
        assert_eq!(inpaint_start_step(4, 0.5), 2);
        assert_eq!(inpaint_start_step(4, 0.1), 3);
        assert_eq!(inpaint_start_step(50, 0.3), 35);
    }
}
