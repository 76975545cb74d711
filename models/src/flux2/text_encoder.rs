//! FLUX.2 klein: text_encoder (in progress).
