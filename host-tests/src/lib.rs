//! A fake Envoy on wasmtime for proxy-wasm plugins.
//!
//! It loads a real proxy-wasm module (ABI 0.2.x), links every `env::proxy_*` host call the
//! Rust SDK can import plus the WASI calls such modules use, and drives the module's
//! callbacks in Envoy's order. Each [`Host`] has its own wasmtime `Store` and instance, its
//! own clock (starting at a fixed time, moved only by [`Host::advance`]) and its own seeded
//! random source, so tests are deterministic and run in parallel.
//!
//! ```no_run
//! use host_tests::{Host, Request, Outcome};
//! let mut host = Host::start(r#"{"some": "config"}"#).expect("plugin starts");
//! match host.request(Request::get("/x").header("accept", "text/html")) {
//!     Outcome::Replied { status, headers, .. } => { /* ... */ }
//!     Outcome::Paused { callouts } => { /* host.respond(callouts[0].token, 200, &[], "{}") */ }
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! A failing test prints the transcript of every callback and host call (on panic, from
//! `Drop`); a trap in the module fails the test that caused it.

mod abi;
mod host;
mod state;
mod types;

pub use host::{
    default_wasm_path, Host, HostBuilder, StartError, DEFAULT_START_SECS, FUEL_PER_CALLBACK,
    WASM_ENV,
};
pub use types::{
    Callout, Forwarded, Headers, LogLevel, LogLine, Metric, MetricKind, Outcome, Reply, Request,
    DEFAULT_AUTHORITY,
};
