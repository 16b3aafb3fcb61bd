//! oidc-filter: OAuth2 / OpenID Connect login for Envoy and Istio, as a proxy-wasm filter.
//!
//! This crate is the glue. The protocol lives in the sans-IO core (`oidc-filter-core`, in
//! `filter/core`, re-exported here): it takes time, randomness and callout results as
//! arguments and returns decisions as data. `wasm` is the only module that talks to the host,
//! and is compiled only for wasm32. See ARCHITECTURE.md.

// `--cfg oidc_size` (filter/build-wasm.sh's Debian route, whose std build already needs
// RUSTC_BOOTSTRAP): the functions marked `#[cfg_attr(oidc_size, optimize(size))]` are
// compiled for size. They run at configuration, on the provider's documents and token
// answers, and on the filter's own endpoints (callback, sign-out, userinfo): never on a
// request the filter lets through, refuses or redirects to the provider.
#![cfg_attr(oidc_size, feature(optimize_attribute))]

pub use oidc_filter_core::*;

// Compiled for wasm32; clippy also checks it on the host (check only, never linked there).
#[cfg(any(target_arch = "wasm32", clippy))]
mod hostcall;
#[cfg(any(target_arch = "wasm32", clippy))]
mod wasm;
