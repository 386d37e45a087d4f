//! Shared helpers for the integration tests.
//!
//! Each test binary pulls this in with `mod support;` and uses only part of
//! it, hence the blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod origin;
pub mod proxy_support;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
