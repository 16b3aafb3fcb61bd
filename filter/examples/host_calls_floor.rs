//! A third floor for `make bench`: the host calls the filter makes for an authenticated
//! request (configuration (d): `set_xauthrequest`, a Cookie header holding only the session),
//! and none of its work. It reads the request header map and the clock, removes the Cookie
//! header and adds six identity headers (`X-Forwarded-*` and `X-Auth-Request-*`: user, email,
//! preferred username), `X-Auth-Request-User` carrying the Cookie header's length so the bench can check
//! that the calls ran. The gap between this and (d) is the filter's own wasm work; the gap
//! between (b2) and this is what those host calls cost on this host.
//!
//! Its plugin configuration picks a part of those calls, so that the bench can count what
//! each costs (cumulative, in this order): `entries` (none: the VM's callbacks alone),
//! `map` (the header map read), `clock` (and the clock), `remove` (and the Cookie header
//! removed), empty or `all` (and the six headers added: the floor itself). Two ways the ABI
//! offers instead: `cookie` (only the Cookie header read, as (b2) does) and `set-map` (the
//! map, the clock, and the whole map written back in one `proxy_set_header_map_pairs`, the
//! Cookie header out and the six in).
//!
//!     make dist/host_calls_floor.wasm

use std::cell::Cell;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

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

const IDENTITY: [&str; 5] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-auth-request-email",
    "x-auth-request-preferred-username",
];

#[derive(Clone, Copy, PartialEq)]
enum Calls {
    Entries,
    Cookie,
    Map,
    Clock,
    Remove,
    All,
    SetMap,
}

thread_local! {
    static CALLS: Cell<Calls> = const { Cell::new(Calls::All) };
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let calls = match config.as_slice() {
            b"" | b"all" => Calls::All,
            b"entries" => Calls::Entries,
            b"cookie" => Calls::Cookie,
            b"map" => Calls::Map,
            b"clock" => Calls::Clock,
            b"remove" => Calls::Remove,
            b"set-map" => Calls::SetMap,
            _ => return false,
        };
        CALLS.with(|c| c.set(calls));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HostCallsFloor))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HostCallsFloor;

impl Context for HostCallsFloor {}

impl HttpContext for HostCallsFloor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let calls = CALLS.with(Cell::get);
        let t = MapType::HttpRequestHeaders;
        match calls {
            Calls::Entries => return Action::Continue,
            Calls::Cookie => {
                let _ = hostcalls::get_map_value_bytes(t, "cookie");
                return Action::Continue;
            }
            _ => {}
        }
        let map = header_map();
        let pairs = oidc_filter_core::headermap::parse(&map).unwrap_or_default();
        let len = pairs
            .iter()
            .find(|(k, _)| *k == b"cookie")
            .map_or(0, |(_, v)| v.len())
            .to_string();
        if calls == Calls::Map {
            return Action::Continue;
        }
        let _ = hostcalls::get_current_time();
        match calls {
            Calls::Remove => {
                let _ = hostcalls::set_map_value(t, "cookie", None);
            }
            Calls::All => {
                let _ = hostcalls::set_map_value(t, "cookie", None);
                let _ = hostcalls::add_map_value(t, "x-auth-request-user", &len);
                for name in IDENTITY {
                    let _ = hostcalls::add_map_value(t, name, "alice@example.com");
                }
            }
            Calls::SetMap => {
                // Names come from the host lower-case and valid; values go as bytes.
                let mut out: Vec<(&str, &[u8])> = pairs
                    .iter()
                    .filter(|(k, _)| *k != b"cookie")
                    .map(|(k, v)| (std::str::from_utf8(k).unwrap_or_default(), *v))
                    .collect();
                out.push(("x-auth-request-user", len.as_bytes()));
                for name in IDENTITY {
                    out.push((name, b"alice@example.com"));
                }
                let _ = hostcalls::set_map_bytes(t, out);
            }
            _ => {}
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> { Box::new(Root) });
}}
