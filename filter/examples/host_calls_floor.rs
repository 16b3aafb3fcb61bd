//! A third floor for `make bench`: the host calls the filter makes for an authenticated
//! request (configuration (d): `set_xauthrequest`, a Cookie header holding only the session),
//! and none of its work. It reads the request header map and the clock, removes the Cookie
//! header and adds six identity headers (`X-Forwarded-*` and `X-Auth-Request-*`: user, email,
//! preferred username), `X-Auth-Request-User` carrying the Cookie header's length so the bench can check
//! that the calls ran. The gap between this and (d) is the filter's own wasm work; the gap
//! between (b2) and this is what those host calls cost on this host.
//!
//!     make dist/host_calls_floor.wasm

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
}

/// The request header map in the ABI's serialized form, read in one call as the filter does.
fn header_map() -> Vec<u8> {
    let mut data = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: the host writes a pointer it got from the SDK's `proxy_on_memory_allocate(size)`
    // (a Vec's buffer of that capacity) and its length; ownership passes to us.
    match unsafe { proxy_get_header_map_pairs(0, &mut data, &mut size) } {
        0 if !data.is_null() => unsafe { Vec::from_raw_parts(data, size, size) },
        _ => Vec::new(),
    }
}

/// The length of the `cookie` value in a serialized map (names come lower-case).
fn cookie_len(map: &[u8]) -> usize {
    oidc_filter_core::headermap::parse(map)
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| *k == b"cookie"))
        .map_or(0, |(_, v)| v.len())
}

struct HostCallsFloor;

impl Context for HostCallsFloor {}

impl HttpContext for HostCallsFloor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let len = cookie_len(&header_map()).to_string();
        let _ = hostcalls::get_current_time();
        let t = MapType::HttpRequestHeaders;
        let _ = hostcalls::set_map_value(t, "cookie", None);
        let _ = hostcalls::add_map_value(t, "x-auth-request-user", &len);
        for name in [
            "x-forwarded-user",
            "x-forwarded-email",
            "x-forwarded-preferred-username",
            "x-auth-request-email",
            "x-auth-request-preferred-username",
        ] {
            let _ = hostcalls::add_map_value(t, name, "alice@example.com");
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
        Box::new(HostCallsFloor)
    });
}}
