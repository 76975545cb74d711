//! editd-kernels: fused tensor ops. Each op is a plain function on `Tensor` with a CPU reference
//! (used on CPU and in tests); CUDA/Metal implementations are picked by cargo feature.
