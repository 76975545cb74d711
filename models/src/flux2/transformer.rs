//! FLUX.2 klein: transformer (in progress).
