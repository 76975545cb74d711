//! Integration tests through the real HTTP stack: in-process server on port 0, reqwest client,
//! the test-double pipeline from tests/support.

#[path = "../support/mod.rs"]
mod support;

mod assets;
mod errors;
mod lifecycle;
mod listing;
