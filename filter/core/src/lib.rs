//! oidc-filter's core: OAuth2 / OpenID Connect login as a sans-IO library.
//!
//! Nothing here talks to a host. Time, randomness, configuration bytes and callout results
//! come in as arguments; decisions, replies, callouts and header changes go out as data. The
//! proxy-wasm glue (the `oidc-filter` crate) translates host calls into these inputs and these
//! outputs into host calls. See ARCHITECTURE.md.

// `--cfg oidc_size` (filter/build-wasm.sh's Debian route, whose std build already needs
// RUSTC_BOOTSTRAP): the functions marked `#[cfg_attr(oidc_size, optimize(size))]` are
// compiled for size. They run at configuration, on the provider's documents and token
// answers, and on the filter's own endpoints (callback, sign-out, userinfo): never on a
// request the filter lets through, refuses or redirects to the provider.
#![cfg_attr(oidc_size, feature(optimize_attribute))]
#![forbid(unsafe_code)]

pub mod bearer;
pub mod claims;
pub mod config;
pub mod domain;
pub mod engine;
pub mod flow;
pub mod headermap;
pub mod http;
pub mod idp;
pub mod oidc;
pub mod policy;
pub mod reason;
pub mod redirect;
pub mod refresh;
pub mod replay;
pub mod routes;
pub mod rsa;
pub mod session;
pub mod telemetry;
pub mod util;
pub mod verified;
