//! The glue: the only code that talks to the host. It builds the request view from host
//! calls, runs the core, and carries out the decision. Every host call used here returns a
//! `Result`; a failure ends in a local reply or a log line, never a trap.
//!
//! Per request: one call reads the whole request header map, then one call per header the
//! decision touches (each identity header set, a forged one removed, the Cookie header without
//! our cookies). Every crossing into the host costs more than the work on either side.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::Config;
use crate::flow::{
    self, Callout, Ctx, Decision, HeaderOp, Idp, LocalReply, PendingLogin, TokenOutcome,
};
use crate::headermap;
use crate::hostcall::{self, REQUEST_HEADERS};
use crate::http::Request;
use crate::idp::{FetchKind, IdpState};

/// Bodies from the provider larger than this are refused unread.
const MAX_IDP_BODY: usize = 1 << 20;
const TICK: Duration = Duration::from_secs(1);

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, len: usize) -> u16;
    fn environ_sizes_get(count: *mut usize, size: *mut usize) -> u16;
    fn environ_get(environ: *mut *mut u8, buf: *mut u8) -> u16;
}

fn fill_random(buf: &mut [u8]) -> bool {
    // SAFETY: the host writes exactly `buf.len()` bytes into `buf`.
    unsafe { random_get(buf.as_mut_ptr(), buf.len()) == 0 }
}

fn getrandom_backend(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    if fill_random(buf) {
        Ok(())
    } else {
        Err(getrandom::Error::UNSUPPORTED)
    }
}
getrandom::register_custom_getrandom!(getrandom_backend);

/// The VM's environment (Envoy `vm_config.environment_variables`, Istio `vmConfig.env`).
fn read_env(name: &str) -> Option<String> {
    let mut count = 0usize;
    let mut size = 0usize;
    // SAFETY: WASI environ_sizes_get writes two integers.
    if unsafe { environ_sizes_get(&mut count, &mut size) } != 0 || count > 4096 || size > 1 << 20 {
        return None;
    }
    let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); count];
    let mut buf: Vec<u8> = vec![0; size];
    // SAFETY: the buffers have the sizes the host just reported.
    if unsafe { environ_get(ptrs.as_mut_ptr(), buf.as_mut_ptr()) } != 0 {
        return None;
    }
    buf.split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| {
            let (k, v) = entry.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Whether the host would keep a line at `level` (asked once per VM, at configure time),
/// so that per-request lines are not even formatted when they would be dropped.
fn enabled(min: LogLevel, level: LogLevel) -> bool {
    level as u32 >= min as u32
}

fn now_secs() -> Option<u64> {
    hostcall::now_secs().ok()
}

/// Header pairs as the SDK's host calls take them.
fn as_pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn dispatch(c: &Callout) -> Result<u32, String> {
    let headers = as_pairs(&c.headers);
    let body = (!c.body.is_empty()).then_some(c.body.as_slice());
    hostcalls::dispatch_http_call(
        &c.cluster,
        headers,
        body,
        vec![],
        Duration::from_millis(c.timeout_ms),
    )
    .map_err(|s| format!("dispatch to cluster {:?} failed: {s:?}", c.cluster))
}

/// Status and body of the callout response being delivered (`None` status: no response).
fn callout_result(num_headers: usize, body_size: usize) -> (Option<u32>, Vec<u8>) {
    if num_headers == 0 {
        return (None, Vec::new());
    }
    let map = hostcall::header_map(hostcall::CALLOUT_RESPONSE_HEADERS).unwrap_or_default();
    let status = headermap::parse(&map)
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| *k == b":status"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u32>().ok());
    if body_size > MAX_IDP_BODY {
        return (status.map(|_| 0), Vec::new());
    }
    let body = hostcall::buffer(hostcall::CALLOUT_RESPONSE_BODY, 0, body_size).unwrap_or_default();
    (status, body)
}

struct Shared {
    config: Option<Rc<Config>>,
    idp: IdpState,
    log_level: LogLevel,
}

/// Runs `f` with the core's view of the current config and provider; `None` before a
/// configuration was accepted.
fn with_ctx<R>(shared: &Shared, now: u64, f: impl FnOnce(&Ctx<'_>) -> R) -> Option<R> {
    let cfg = shared.config.as_deref()?;
    let idp = match (&shared.idp.provider, &shared.idp.keys) {
        (Some(provider), Some(keys)) => Some(Idp { provider, keys }),
        _ => None,
    };
    Some(f(&Ctx {
        config: cfg,
        idp,
        now,
    }))
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root {
            shared: Rc::new(RefCell::new(Shared {
                config: None,
                idp: IdpState::default(),
                log_level: LogLevel::Trace,
            })),
            fetches: HashMap::new(),
        })
    });
}}

struct Root {
    shared: Rc<RefCell<Shared>>,
    fetches: HashMap<u32, FetchKind>,
}

impl Root {
    fn poll(&mut self) {
        let Some(now) = now_secs() else { return };
        let mut shared = self.shared.borrow_mut();
        let Some(cfg) = shared.config.clone() else {
            return;
        };
        let (kind, callout, url) = match shared.idp.poll(&cfg, now) {
            Ok(Some(fetch)) => fetch,
            Ok(None) => return,
            Err(why) => {
                log(LogLevel::Error, &format!("oidc-filter: {why}"));
                return;
            }
        };
        match dispatch(&callout) {
            Ok(token) => {
                self.fetches.insert(token, kind);
            }
            Err(e) => {
                let msg = match shared.idp.on_response(&cfg, kind, None, &[], now) {
                    Ok(m) | Err(m) => m,
                };
                log(LogLevel::Warn, &format!("oidc-filter: {url}: {e}; {msg}"));
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(kind) = self.fetches.remove(&token) else {
            return;
        };
        let (status, body) = callout_result(num_headers, body_size);
        let Some(now) = now_secs() else { return };
        let mut shared = self.shared.borrow_mut();
        let Some(cfg) = shared.config.clone() else {
            return;
        };
        match shared.idp.on_response(&cfg, kind, status, &body, now) {
            Ok(msg) => log(LogLevel::Info, &format!("oidc-filter: {msg}")),
            Err(msg) => log(LogLevel::Warn, &format!("oidc-filter: {msg}")),
        }
        drop(shared);
        // Discovery loaded: fetch the keys straight away rather than on the next tick.
        self.poll();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let raw = hostcall::buffer(hostcall::PLUGIN_CONFIGURATION, 0, size).unwrap_or_default();
        match Config::parse(&raw, &read_env) {
            Ok(cfg) => {
                let mut shared = self.shared.borrow_mut();
                shared.log_level = hostcalls::get_log_level().unwrap_or(LogLevel::Trace);
                shared.idp = IdpState::new(&cfg);
                shared.config = Some(Rc::new(cfg));
                drop(shared);
                if hostcalls::set_tick_period(TICK).is_err() {
                    log(LogLevel::Error, "oidc-filter: cannot set the tick period");
                    return false;
                }
                self.poll();
                true
            }
            Err(errors) => {
                for e in errors {
                    log(LogLevel::Error, &e.to_string());
                }
                log(LogLevel::Error, "oidc-filter: configuration refused");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.poll();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            shared: self.shared.clone(),
            state: Waiting::Nothing,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

enum Waiting {
    Nothing,
    Token {
        token: u32,
        pending: PendingLogin,
    },
    Keys {
        token: u32,
        pending: PendingLogin,
        status: Option<u32>,
        body: Vec<u8>,
    },
    /// A reply was sent or the client left: nothing more may happen to this request.
    Done,
}

struct Filter {
    shared: Rc<RefCell<Shared>>,
    state: Waiting,
}

impl Filter {
    fn reply(&mut self, r: &LocalReply) {
        let level = if r.status >= 500 {
            LogLevel::Warn
        } else if r.status >= 400 && r.status != 401 {
            LogLevel::Info
        } else {
            LogLevel::Debug
        };
        if enabled(self.shared.borrow().log_level, level) {
            let detail = r.detail.as_deref().unwrap_or("");
            log(
                level,
                &format!("oidc-filter: {} {} {detail}", r.status, r.reason),
            );
        }
        let pairs: Vec<(&[u8], &[u8])> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        let sent = headermap::serialize(&pairs)
            .ok_or(0)
            .and_then(|h| hostcall::send_local_response(r.status, &h, r.body.as_bytes()));
        if sent.is_err() {
            log(LogLevel::Error, "oidc-filter: could not send a local reply");
        }
        self.state = Waiting::Done;
    }

    fn fail(&mut self, status: u32, reason: &'static str, detail: &str) -> Action {
        self.reply(&flow::error_reply(status, reason, Some(detail.to_string())));
        Action::Pause
    }

    /// Runs the token response through the core and acts on the outcome.
    fn finish_login(
        &mut self,
        pending: PendingLogin,
        status: Option<u32>,
        body: Vec<u8>,
        may_refetch: bool,
    ) {
        let Some(now) = now_secs() else {
            self.fail(500, "internal_error", "no clock");
            return;
        };
        let shared_rc = self.shared.clone();
        let outcome = with_ctx(&shared_rc.borrow(), now, |ctx| {
            flow::on_token_response(ctx, &pending, status, &body, may_refetch)
        });
        let Some(outcome) = outcome else {
            self.fail(500, "internal_error", "no configuration");
            return;
        };
        match outcome {
            TokenOutcome::Reply(r) => self.reply(&r),
            TokenOutcome::RefetchJwks => {
                let mut shared = shared_rc.borrow_mut();
                let callout = match shared.config.clone() {
                    Some(cfg) if shared.idp.take_forced_jwks(now) => shared.idp.jwks_callout(&cfg),
                    _ => None,
                };
                drop(shared);
                match callout.map(|c| dispatch(&c)) {
                    Some(Ok(token)) => {
                        log(
                            LogLevel::Info,
                            "oidc-filter: ID token names an unknown key; refetching the JWKS",
                        );
                        self.state = Waiting::Keys {
                            token,
                            pending,
                            status,
                            body,
                        };
                    }
                    _ => self.finish_login(pending, status, body, false),
                }
            }
        }
    }
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        match std::mem::replace(&mut self.state, Waiting::Nothing) {
            Waiting::Token { token: t, pending } if t == token => {
                let (status, body) = callout_result(num_headers, body_size);
                if status.is_some() && body_size > MAX_IDP_BODY {
                    self.fail(502, "token_response_invalid", "token response too large");
                    return;
                }
                self.finish_login(pending, status, body, true);
            }
            Waiting::Keys {
                token: t,
                pending,
                status,
                body,
            } if t == token => {
                let (kstatus, kbody) = callout_result(num_headers, body_size);
                if let Some(now) = now_secs() {
                    let mut shared = self.shared.borrow_mut();
                    if let Some(cfg) = shared.config.clone() {
                        match shared
                            .idp
                            .on_response(&cfg, FetchKind::Jwks, kstatus, &kbody, now)
                        {
                            Ok(msg) => log(LogLevel::Info, &format!("oidc-filter: {msg}")),
                            Err(msg) => log(LogLevel::Warn, &format!("oidc-filter: {msg}")),
                        }
                    }
                }
                self.finish_login(pending, status, body, false);
            }
            // Not ours, or the request was already answered or abandoned: drop it.
            other => self.state = other,
        }
    }

    fn on_done(&mut self) -> bool {
        self.state = Waiting::Done;
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Ok(map) = hostcall::header_map(REQUEST_HEADERS) else {
            return self.fail(500, "internal_error", "cannot read request headers");
        };
        let Some(raw) = headermap::parse(&map) else {
            return self.fail(500, "internal_error", "malformed request header map");
        };
        let req = Request::from_pairs(&raw);
        let Some(now) = now_secs() else {
            return self.fail(500, "internal_error", "no clock");
        };
        let mut random = || {
            let mut b = [0u8; 32];
            fill_random(&mut b).then_some(b)
        };
        let shared = self.shared.clone();
        let shared = shared.borrow();
        let decision = with_ctx(&shared, now, |ctx| flow::on_request(ctx, &req, &mut random));
        let Some(decision) = decision else {
            return self.fail(500, "internal_error", "no configuration");
        };
        match decision {
            Decision::Continue(fwd) => {
                let Some(cfg) = shared.config.as_deref() else {
                    return self.fail(500, "internal_error", "no configuration");
                };
                for op in flow::header_ops(cfg, &raw, &fwd) {
                    let done = match op {
                        HeaderOp::Remove(k) => hostcall::remove_header(REQUEST_HEADERS, k),
                        HeaderOp::Replace(k, v) => hostcall::replace_header(REQUEST_HEADERS, k, &v),
                        HeaderOp::Add(k, v) => hostcall::add_header(REQUEST_HEADERS, k, &v),
                    };
                    if done.is_err() {
                        return self.fail(500, "internal_error", "cannot rewrite request headers");
                    }
                }
                Action::Continue
            }
            Decision::Reply(r) => {
                self.reply(&r);
                Action::Pause
            }
            Decision::ExchangeCode { callout, pending } => match dispatch(&callout) {
                Ok(token) => {
                    self.state = Waiting::Token { token, pending };
                    Action::Pause
                }
                Err(e) => self.fail(502, "token_request_failed", &e),
            },
        }
    }
}
