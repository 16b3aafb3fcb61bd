//! A second floor for `make bench`: the least any cookie-session filter does per request on
//! this host. It reads one request header (Cookie) and sets one (its length, as a stand-in
//! for an identity), and checks nothing. The real filter also reads every header name (to
//! drop forged identity headers in any spelling), verifies an HMAC, and sets one header per
//! identity field; the gap between the two is that work.
//!
//!     make dist/cookie_floor.wasm

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

struct CookieFloor;

impl Context for CookieFloor {}

impl HttpContext for CookieFloor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let cookie = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "cookie");
        let len = cookie.ok().flatten().map_or(0, |c| c.len()).to_string();
        let _ = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            "x-auth-request-user",
            Some(&len),
        );
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
        Box::new(CookieFloor)
    });
}}
