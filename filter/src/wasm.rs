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
use crate::idp::{FetchKind, IdpState, UnknownKid, KEY_WAIT_SECS};
use crate::replay;

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
    /// Logins whose ID token names a key we lack, waiting for the next JWKS response (see
    /// `IdpState::on_unknown_kid`); the root answers them, by context id.
    key_waiters: Vec<KeyWaiter>,
}

/// Logins that may wait for keys at once; more are answered with 503 and Retry-After.
const MAX_KEY_WAITERS: usize = 256;

struct KeyWaiter {
    context_id: u32,
    kid: String,
    since: u64,
    pending: PendingLogin,
    status: Option<u32>,
    body: Vec<u8>,
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
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root {
            shared: Rc::new(RefCell::new(Shared {
                config: None,
                idp: IdpState::default(),
                log_level: LogLevel::Trace,
                key_waiters: Vec::new(),
            })),
            fetches: HashMap::new(),
            context_id,
        })
    });
}}

struct Root {
    shared: Rc<RefCell<Shared>>,
    fetches: HashMap<u32, FetchKind>,
    context_id: u32,
}

impl Root {
    /// Answers the logins waiting for keys: all of them after a JWKS response (`all`), else
    /// those that waited `KEY_WAIT_SECS`. Each is validated once more with the keys we hold
    /// now; a kid still missing is remembered as refused.
    fn answer_key_waiters(&mut self, now: u64, all: bool) {
        let mut shared = self.shared.borrow_mut();
        let (due, rest): (Vec<KeyWaiter>, Vec<KeyWaiter>) = std::mem::take(&mut shared.key_waiters)
            .into_iter()
            .partition(|w| all || now >= w.since + KEY_WAIT_SECS);
        shared.key_waiters = rest;
        if due.is_empty() {
            return;
        }
        for w in &due {
            if !shared.idp.keys.as_ref().is_some_and(|k| k.has_kid(&w.kid)) {
                shared.idp.still_unknown(&w.kid, now);
            }
        }
        let replies: Vec<(u32, LocalReply)> = due
            .into_iter()
            .map(|w| {
                let outcome = with_ctx(&shared, now, |ctx| {
                    flow::on_token_response(ctx, &w.pending, w.status, &w.body, false)
                });
                let r = match outcome {
                    Some(TokenOutcome::Reply(r)) => r,
                    _ => flow::error_reply(500, "internal_error", Some("no configuration".into())),
                };
                (w.context_id, r)
            })
            .collect();
        let level = shared.log_level;
        drop(shared);
        for (id, r) in replies {
            if hostcall::set_effective_context(id).is_ok() {
                send_reply(level, &r);
            }
        }
        let _ = hostcall::set_effective_context(self.context_id);
    }

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
        if kind == FetchKind::Jwks {
            self.answer_key_waiters(now, true);
        }
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
                // The host inserts a missing key whatever the CAS token: create the list of
                // spent logins before any request, so that every claim is a real CAS.
                match hostcall::shared_data(SPENT_LOGINS_KEY) {
                    Ok((_, 0)) => {
                        let _ = hostcall::set_shared_data(SPENT_LOGINS_KEY, &[], 0);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        log(LogLevel::Error, "oidc-filter: the host has no shared data");
                        return false;
                    }
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
        if let Some(now) = now_secs() {
            self.answer_key_waiters(now, false);
        }
        self.poll();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            shared: self.shared.clone(),
            state: Waiting::Nothing,
            context_id,
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
    /// In `Shared::key_waiters`: the root answers it.
    Keys,
    /// A reply was sent or the client left: nothing more may happen to this request.
    Done,
}

struct Filter {
    shared: Rc<RefCell<Shared>>,
    state: Waiting,
    context_id: u32,
}

/// Logs a local reply (never its body or cookies) and sends it on the effective context.
fn send_reply(log_level: LogLevel, r: &LocalReply) {
    let level = if r.status >= 500 {
        LogLevel::Warn
    } else if r.status >= 400 && r.status != 401 {
        LogLevel::Info
    } else {
        LogLevel::Debug
    };
    if enabled(log_level, level) {
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
}

impl Filter {
    /// Body or trailers arrived: a paused login stays paused; anything else goes on.
    fn hold(&self) -> Action {
        match self.state {
            Waiting::Nothing => Action::Continue,
            _ => Action::Pause,
        }
    }

    fn reply(&mut self, r: &LocalReply) {
        let level = self.shared.borrow().log_level;
        send_reply(level, r);
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
            TokenOutcome::RefetchJwks(kid) => {
                let mut shared = shared_rc.borrow_mut();
                let verdict = shared.idp.on_unknown_kid(&kid, now);
                let full = shared.key_waiters.len() >= MAX_KEY_WAITERS;
                if verdict == UnknownKid::Wait && !full {
                    log(
                        LogLevel::Info,
                        "oidc-filter: ID token names an unknown key; waiting for a JWKS refetch",
                    );
                    shared.key_waiters.push(KeyWaiter {
                        context_id: self.context_id,
                        kid,
                        since: now,
                        pending,
                        status,
                        body,
                    });
                    drop(shared);
                    self.state = Waiting::Keys;
                    // The root fetches on its next tick (single flight, rate limited).
                } else if full {
                    drop(shared);
                    let mut r = flow::error_reply(
                        503,
                        "idp_not_ready",
                        Some("too many logins waiting for keys".into()),
                    );
                    r.headers
                        .push(("retry-after".into(), flow::RETRY_AFTER_SECS.to_string()));
                    self.reply(&r);
                } else {
                    drop(shared);
                    self.finish_login(pending, status, body, false);
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
            // Not ours, or the request was already answered or abandoned: drop it.
            other => self.state = other,
        }
    }

    fn on_done(&mut self) -> bool {
        if matches!(self.state, Waiting::Keys) {
            let id = self.context_id;
            self.shared
                .borrow_mut()
                .key_waiters
                .retain(|w| w.context_id != id);
        }
        self.state = Waiting::Done;
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Ok(map) = hostcall::header_map(REQUEST_HEADERS) else {
            return self.fail(500, "internal_error", "cannot read request headers");
        };
        let Some(raw) = headermap::parse(&map) else {
            return self.fail(500, "internal_error", "malformed request header map");
        };
        let mut req = Request::from_pairs(&raw);
        req.body_follows = !end_of_stream;
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
            Decision::ExchangeCode {
                callout,
                pending,
                claim,
                replayed,
            } => match claim_login(&claim, now) {
                Err(()) => self.fail(503, "internal_error", "cannot record the login as spent"),
                Ok(false) => {
                    self.reply(&replayed);
                    Action::Pause
                }
                Ok(true) => match dispatch(&callout) {
                    Ok(token) => {
                        self.state = Waiting::Token { token, pending };
                        Action::Pause
                    }
                    Err(e) => self.fail(502, "token_request_failed", &e),
                },
            },
        }
    }

    // Defence in depth: while a login waits for the provider, no body data or trailers may
    // resume the request; only our own local reply ends it.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.hold()
    }
}

/// Where the spent logins are kept (see `replay`): one list per plugin `vm_id`.
const SPENT_LOGINS_KEY: &str = "oidc-filter.spent-logins.v1";

/// Records `claim` in the list every worker VM shares, by compare-and-swap. `Ok(false)` when
/// it was spent already; `Err` when the host's shared data does not work.
fn claim_login(claim: &flow::LoginClaim, now: u64) -> Result<bool, ()> {
    for _ in 0..16 {
        let (list, cas) = hostcall::shared_data(SPENT_LOGINS_KEY).map_err(|_| ())?;
        let Ok(next) = replay::claim(&list, &claim.id, now, claim.expires_at) else {
            return Ok(false);
        };
        match hostcall::set_shared_data(SPENT_LOGINS_KEY, &next, cas) {
            Ok(()) => return Ok(true),
            Err(hostcall::CAS_MISMATCH) => continue,
            Err(_) => return Err(()),
        }
    }
    Err(())
}
