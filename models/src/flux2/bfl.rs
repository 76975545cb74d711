//! FLUX.2 klein: bfl (in progress).
