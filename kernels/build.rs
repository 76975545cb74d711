//! Build script of editd-kernels: with the `cuda` feature, compiles `cuda/*.cu` to PTX with nvcc
//! (`$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on PATH) for `compute_$CUDA_COMPUTE_CAP`
//! (default 90) into `$OUT_DIR`; `src/cuda.rs` embeds the PTX. Without the feature it does nothing.
//! nvcc must be 13.0.x for driver 580 (see scripts/cuda-toolchain.sh).

use std::path::PathBuf;
use std::process::Command;

const SOURCES: &[&str] = &["fused"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP", "NVCC_CCBIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| match std::env::var("CUDA_HOME") {
        Ok(home) => format!("{home}/bin/nvcc"),
        Err(_) => "nvcc".to_string(),
    });
    // cudaforge turns "90" into sm_90a for candle's kernels; plain PTX for compute_90 is enough
    // here (no wgmma), and "90a" is accepted too.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let cap = cap.trim().replace('.', "");
    for name in SOURCES {
        let src = format!("cuda/{name}.cu");
        let dst = out_dir.join(format!("{name}.ptx"));
        let mut cmd = Command::new(&nvcc);
        cmd.args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&dst)
            .arg(&src);
        if let Ok(ccbin) = std::env::var("NVCC_CCBIN") {
            cmd.arg("-ccbin").arg(ccbin);
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run {nvcc} (set NVCC or CUDA_HOME): {e}"));
        assert!(status.success(), "{nvcc} failed on {src}: {status}");
    }
}
