//! oidc-filter: OAuth2 / OpenID Connect login for Envoy and Istio, as a proxy-wasm filter.
//!
//! The protocol lives in a sans-IO core (`config`, `flow`, `idp`, `oidc`, `session`, `http`,
//! `redirect`) that takes time, randomness and callout results as arguments and returns
//! decisions as data. `wasm` is the only module that talks to the host, and is compiled only
//! for wasm32.

pub mod config;
pub mod flow;
pub mod headermap;
pub mod http;
pub mod idp;
pub mod oidc;
pub mod redirect;
pub mod replay;
pub mod session;
pub mod util;

// Compiled for wasm32; clippy also checks it on the host (check only, never linked there).
#[cfg(any(target_arch = "wasm32", clippy))]
mod hostcall;
#[cfg(any(target_arch = "wasm32", clippy))]
mod wasm;
