//! FLUX.2 klein: loader (in progress).
