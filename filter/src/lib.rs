//! oidc-filter: OAuth2 / OpenID Connect login for Envoy and Istio, as a proxy-wasm filter.
//!
//! This crate is the glue. The protocol lives in the sans-IO core (`oidc-filter-core`, in
//! `filter/core`, re-exported here): it takes time, randomness and callout results as
//! arguments and returns decisions as data. `wasm` is the only module that talks to the host,
//! and is compiled only for wasm32. See ARCHITECTURE.md.

pub use oidc_filter_core::*;

// Compiled for wasm32; clippy also checks it on the host (check only, never linked there).
#[cfg(any(target_arch = "wasm32", clippy))]
mod hostcall;
#[cfg(any(target_arch = "wasm32", clippy))]
mod wasm;
