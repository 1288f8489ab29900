//! Shared test support.

pub mod pg;
