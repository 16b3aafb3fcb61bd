//! oidc-filter's core: OAuth2 / OpenID Connect login as a sans-IO library.
//!
//! Nothing here talks to a host. Time, randomness, configuration bytes and callout results
//! come in as arguments; decisions, replies, callouts and header changes go out as data. The
//! proxy-wasm glue (the `oidc-filter` crate) translates host calls into these inputs and these
//! outputs into host calls. See ARCHITECTURE.md.
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
