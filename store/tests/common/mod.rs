//! Helpers shared by the store's test binaries.
#![allow(dead_code)]

pub mod pg;
