//! The "wasm floor" for `make bench`: a proxy-wasm HTTP filter that does nothing but let every
//! request through. Built with the same toolchain, profile and SDK as the real filter, so that
//! the difference between the two is the filter's own work, not the cost of running wasm.
//!
//!     make dist/noop.wasm

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
        Box::new(Noop)
    });
}}
