//! Wire types of sdrt's A1111-compatible `/sdapi/v1` API: requests, responses, sampler and scheduler names.
//!
//! This is the bottom of the crate stack: it knows serde and nothing about files, models or tensors.
