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

use oidc_filter_core::config::Config;
use oidc_filter_core::engine::{Engine, LogLine, Response, Step, Stream};
use oidc_filter_core::flow::{self, Callout, HeaderOp, LocalReply};
use oidc_filter_core::headermap;
use oidc_filter_core::http::Request;
use oidc_filter_core::reason::{Level, Reason};
use oidc_filter_core::refresh::{self, Record, Slot};
use oidc_filter_core::replay;
use oidc_filter_core::telemetry::{self, Label};

use crate::hostcall::{self, REQUEST_HEADERS, RESPONSE_HEADERS};

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

/// The callout response being delivered, read whole unless larger than `MAX_IDP_BODY`.
fn callout_response(num_headers: usize, body_size: usize) -> Response {
    if num_headers == 0 {
        return Response::default();
    }
    let map = hostcall::header_map(hostcall::CALLOUT_RESPONSE_HEADERS).unwrap_or_default();
    let status = headermap::parse(&map)
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| *k == b":status"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u32>().ok());
    if body_size > MAX_IDP_BODY {
        return Response {
            status,
            body: Vec::new(),
            too_large: true,
        };
    }
    let body = hostcall::buffer(hostcall::CALLOUT_RESPONSE_BODY, 0, body_size).unwrap_or_default();
    Response {
        status,
        body,
        too_large: false,
    }
}

fn host_level(l: Level) -> LogLevel {
    match l {
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
    }
}

fn emit(lines: Vec<LogLine>) {
    for (level, msg) in lines {
        log(host_level(level), &format!("oidc-filter: {msg}"));
    }
}

/// What the root and every request of one VM share: the engine, once configured.
struct Shared {
    engine: Option<Engine>,
    log_level: LogLevel,
    metrics: Metrics,
}

/// Metrics (see `telemetry`): counts are kept here and added to the host's counters on the
/// root's tick, so a request costs no host call for them; callout latencies are recorded as
/// they come.
#[derive(Default)]
struct Metrics {
    ids: HashMap<String, u32>,
    pending: HashMap<String, i64>,
    /// Decisions by (reason code, provider index) since the last flush: a short list (a few
    /// kinds of decision a second), searched from the most recent; a request costs a compare
    /// or two, no hashing.
    decisions: Vec<((&'static str, Option<usize>), i64)>,
    /// Callouts in flight: token → (endpoint, dispatched at, ms).
    inflight: HashMap<u32, (&'static str, u64)>,
}

/// Metric names defined per VM at most (label values are bounded by the config; this is a
/// guard, not a limit a deployment meets).
const MAX_METRICS: usize = 1024;

impl Metrics {
    fn id(&mut self, kind: u32, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        if self.ids.len() >= MAX_METRICS {
            return None;
        }
        let id = hostcall::define_metric(kind, name).ok()?;
        self.ids.insert(name.to_string(), id);
        Some(id)
    }

    fn count(&mut self, family: &str, labels: &[(&str, &str)]) {
        let name = telemetry::metric_name(family, labels);
        if let Some(n) = self.pending.get_mut(&name) {
            *n += 1;
        } else if self.pending.len() < MAX_METRICS {
            self.pending.insert(name, 1);
        }
    }

    fn decision(&mut self, code: &'static str, provider: Option<usize>) {
        let key = (code, provider);
        if let Some((_, n)) = self.decisions.iter_mut().rev().find(|(k, _)| *k == key) {
            *n += 1;
        } else if self.decisions.len() < MAX_METRICS {
            self.decisions.push((key, 1));
        }
    }

    fn refreshes(&mut self, outcomes: Vec<&'static str>) {
        for o in outcomes {
            self.count(telemetry::REFRESHES, &[("outcome", o)]);
        }
    }

    fn sent(&mut self, endpoint: &'static str, sent: &Result<u32, String>) {
        match sent {
            Ok(token) => {
                if self.inflight.len() >= 4096 {
                    // Callouts of streams that went away are never answered.
                    self.inflight.clear();
                }
                let now = hostcall::now_ms().unwrap_or(0);
                self.inflight.insert(*token, (endpoint, now));
            }
            Err(_) => self.count(
                telemetry::CALLOUTS,
                &[("endpoint", endpoint), ("outcome", "dispatch_failed")],
            ),
        }
    }

    fn answered(&mut self, token: u32, resp: &Response) {
        let Some((endpoint, at)) = self.inflight.remove(&token) else {
            return;
        };
        let outcome = telemetry::callout_outcome(resp.status, resp.too_large);
        self.count(
            telemetry::CALLOUTS,
            &[("endpoint", endpoint), ("outcome", outcome)],
        );
        let ms = hostcall::now_ms().unwrap_or(at).saturating_sub(at);
        let name = telemetry::metric_name(telemetry::CALLOUT_DURATION, &[("endpoint", endpoint)]);
        if let Some(id) = self.id(hostcall::METRIC_HISTOGRAM, &name) {
            let _ = hostcall::record_metric(id, ms);
        }
    }

    /// Adds the counts kept since the last flush to the host's counters.
    fn flush(&mut self, config: Option<&Config>) {
        for ((code, provider), n) in std::mem::take(&mut self.decisions) {
            let name = provider
                .and_then(|i| config?.providers.get(i))
                .map_or("none", |p| p.name.as_str());
            let metric = telemetry::metric_name(
                telemetry::DECISIONS,
                &[("reason", code), ("provider", name)],
            );
            *self.pending.entry(metric).or_insert(0) += n;
        }
        for (name, n) in std::mem::take(&mut self.pending) {
            if let Some(id) = self.id(hostcall::METRIC_COUNTER, &name) {
                let _ = hostcall::increment_metric(id, n);
            }
        }
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root {
            shared: Rc::new(RefCell::new(Shared {
                engine: None,
                log_level: LogLevel::Trace,
                metrics: Metrics::default(),
            })),
            context_id,
        })
    });
}}

struct Root {
    shared: Rc<RefCell<Shared>>,
    context_id: u32,
}

impl Root {
    /// Carries out what the engine has due: the logins it answers (on their own contexts),
    /// then the fetches it wants sent.
    #[cfg_attr(oidc_size, optimize(size))]
    fn pump(&mut self) {
        let Some(now) = now_secs() else { return };
        let mut logs = Vec::new();
        let mut guard = self.shared.borrow_mut();
        let shared = &mut *guard;
        let level = shared.log_level;
        let Some(engine) = shared.engine.as_mut() else {
            return;
        };
        let answers = engine.poll_answers(now);
        for f in engine.poll_fetches(now, &mut logs) {
            let sent = dispatch(&f.callout);
            shared.metrics.sent(f.callout.endpoint, &sent);
            engine.fetch_sent(&f, sent, now, &mut logs);
        }
        for a in &answers {
            shared
                .metrics
                .decision(a.reply.reason.code(), Some(a.provider));
        }
        shared
            .metrics
            .flush(shared.engine.as_ref().map(|e| &e.config));
        drop(guard);
        emit(logs);
        if answers.is_empty() {
            return;
        }
        for a in answers {
            if hostcall::set_effective_context(a.stream).is_ok() {
                send_reply(level, &a.reply, None);
            }
        }
        let _ = hostcall::set_effective_context(self.context_id);
    }
}

impl Context for Root {
    #[cfg_attr(oidc_size, optimize(size))]
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(now) = now_secs() else { return };
        let resp = callout_response(num_headers, body_size);
        let mut logs = Vec::new();
        let handled = {
            let mut guard = self.shared.borrow_mut();
            let shared = &mut *guard;
            shared.metrics.answered(token, &resp);
            match shared.engine.as_mut() {
                Some(engine) => engine.handle_fetch_response(token, &resp, now, &mut logs),
                None => false,
            }
        };
        emit(logs);
        if handled {
            // Keys came (answer who waits), or metadata did (fetch the keys now).
            self.pump();
        }
    }
}

impl RootContext for Root {
    #[cfg_attr(oidc_size, optimize(size))]
    fn on_configure(&mut self, size: usize) -> bool {
        let raw = hostcall::buffer(hostcall::PLUGIN_CONFIGURATION, 0, size).unwrap_or_default();
        let cfg = match Config::parse(&raw, &read_env) {
            Ok(cfg) => cfg,
            Err(errors) => {
                for e in errors {
                    log(LogLevel::Error, &e.to_string());
                }
                log(LogLevel::Error, "oidc-filter: configuration refused");
                return false;
            }
        };
        {
            let mut shared = self.shared.borrow_mut();
            shared.log_level = hostcalls::get_log_level().unwrap_or(LogLevel::Trace);
            shared.engine = Some(Engine::new(cfg));
        }
        if hostcalls::set_tick_period(TICK).is_err() {
            log(LogLevel::Error, "oidc-filter: cannot set the tick period");
            return false;
        }
        // The host inserts a missing key whatever the CAS token: create the lists of spent
        // logins and of refreshes before any request, so that every claim is a real CAS.
        for key in [SPENT_LOGINS_KEY, REFRESHES_KEY] {
            match hostcall::shared_data(key) {
                Ok((_, 0)) => {
                    let _ = hostcall::set_shared_data(key, &[], 0);
                }
                Ok(_) => {}
                Err(_) => {
                    log(LogLevel::Error, "oidc-filter: the host has no shared data");
                    return false;
                }
            }
        }
        self.pump();
        true
    }

    fn on_tick(&mut self) {
        self.pump();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            shared: self.shared.clone(),
            stream: Stream::new(context_id),
            response_cookies: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    shared: Rc<RefCell<Shared>>,
    stream: Stream,
    /// `Set-Cookie` lines for the response (a refreshed session, a new last-seen mark).
    response_cookies: Vec<String>,
}

/// Logs a local reply (never its body or cookies: its status, reason, the request's provider,
/// host and path, and the detail) and sends it on the effective context.
fn send_reply(log_level: LogLevel, r: &LocalReply, label: Option<&Label>) {
    let level = host_level(r.reason.level());
    if enabled(log_level, level) {
        let detail = r.detail.as_deref().unwrap_or("");
        let fields = label.map(Label::fields).unwrap_or_default();
        log(
            level,
            &format!("oidc-filter: {} {} {fields} {detail}", r.status, r.reason),
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
    /// Carries out `step` and the steps it leads to.
    fn run(&mut self, step: Step, raw: &[(&[u8], &[u8])], now: u64) -> Action {
        let action = self.carry_out(step, raw, now);
        let refreshes = self.stream.take_refreshes();
        if !refreshes.is_empty() {
            self.shared.borrow_mut().metrics.refreshes(refreshes);
        }
        action
    }

    fn reply(&mut self, level: LogLevel, r: &LocalReply) -> Action {
        send_reply(level, r, self.stream.label());
        self.shared
            .borrow_mut()
            .metrics
            .decision(r.reason.code(), self.stream.provider());
        Action::Pause
    }

    fn carry_out(&mut self, mut step: Step, raw: &[(&[u8], &[u8])], now: u64) -> Action {
        let level = self.shared.borrow().log_level;
        loop {
            step = match step {
                Step::Forward(fwd) => {
                    let shared = self.shared.borrow();
                    let Some(engine) = shared.engine.as_ref() else {
                        return Action::Continue;
                    };
                    for op in flow::header_ops(&engine.config, raw, &fwd) {
                        let done = match op {
                            HeaderOp::Remove(k) => hostcall::remove_header(REQUEST_HEADERS, k),
                            HeaderOp::Replace(k, v) => {
                                hostcall::replace_header(REQUEST_HEADERS, k, &v)
                            }
                            HeaderOp::Add(k, v) => hostcall::add_header(REQUEST_HEADERS, k, &v),
                        };
                        if done.is_err() {
                            drop(shared);
                            let r = self
                                .stream
                                .fail(Reason::InternalError, "cannot rewrite request headers");
                            return self.reply(level, &r);
                        }
                    }
                    drop(shared);
                    if let Some(line) = &fwd.log {
                        if enabled(level, LogLevel::Info) {
                            let fields = self.stream.label().map(Label::fields).unwrap_or_default();
                            log(LogLevel::Info, &format!("oidc-filter: {line} {fields}"));
                        }
                    }
                    self.shared
                        .borrow_mut()
                        .metrics
                        .decision(fwd.via.code(), self.stream.provider());
                    self.response_cookies = fwd.set_cookies;
                    return Action::Continue;
                }
                Step::Reply(r) => return self.reply(level, &r),
                Step::Claim(claim) => self.stream.handle_claim(claim_login(&claim, now)),
                Step::Dispatch(callout) => {
                    let sent = dispatch(&callout);
                    self.shared
                        .borrow_mut()
                        .metrics
                        .sent(callout.endpoint, &sent);
                    self.stream.handle_dispatch(sent)
                }
                Step::Wait => return Action::Pause,
                Step::RefreshSlot { id, until } => {
                    let slot = refresh_slot(&id, now, until);
                    let mut shared = self.shared.borrow_mut();
                    let Some(engine) = shared.engine.as_mut() else {
                        return Action::Continue;
                    };
                    self.stream.handle_slot(engine, slot, now)
                }
                Step::Publish { id, record, then } => {
                    if publish_refresh(&id, &record, now).is_err() {
                        log(LogLevel::Warn, "oidc-filter: cannot record a refresh");
                    }
                    *then
                }
            }
        }
    }

    fn fail(&mut self, reason: Reason, detail: &str) -> Action {
        let r = self.stream.fail(reason, detail);
        let level = self.shared.borrow().log_level;
        self.reply(level, &r)
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
        let Some(now) = now_secs() else { return };
        let resp = callout_response(num_headers, body_size);
        let step = {
            let mut guard = self.shared.borrow_mut();
            let shared = &mut *guard;
            shared.metrics.answered(token, &resp);
            let Some(engine) = shared.engine.as_mut() else {
                return;
            };
            self.stream.handle_callout(engine, token, resp, now)
        };
        let Some(step) = step else { return };
        // A refreshed request goes on: its headers are rewritten as on arrival (our cookies
        // out of `Cookie` too), then it resumes.
        let map = hostcall::header_map(REQUEST_HEADERS).unwrap_or_default();
        let raw = headermap::parse(&map).unwrap_or_default();
        if let Action::Continue = self.run(step, &raw, now) {
            if hostcall::resume_request().is_err() {
                log(
                    LogLevel::Warn,
                    "oidc-filter: cannot resume a refreshed request",
                );
            }
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(engine) = self.shared.borrow_mut().engine.as_mut() {
            self.stream.handle_done(engine);
        }
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Ok(map) = hostcall::header_map(REQUEST_HEADERS) else {
            return self.fail(Reason::InternalError, "cannot read request headers");
        };
        let Some(raw) = headermap::parse(&map) else {
            return self.fail(Reason::InternalError, "malformed request header map");
        };
        let mut req = Request::from_pairs(&raw);
        req.body_follows = !end_of_stream;
        let Some(now) = now_secs() else {
            return self.fail(Reason::InternalError, "no clock");
        };
        let mut random = || {
            let mut b = [0u8; 32];
            fill_random(&mut b).then_some(b)
        };
        let step = {
            let mut shared = self.shared.borrow_mut();
            let Some(engine) = shared.engine.as_mut() else {
                drop(shared);
                return self.fail(Reason::InternalError, "no configuration");
            };
            self.stream.handle_request(engine, &req, now, &mut random)
        };
        self.run(step, &raw, now)
    }

    // Defence in depth: while a login waits for the provider, no body data or trailers may
    // resume the request; only our own local reply ends it.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.hold()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for c in std::mem::take(&mut self.response_cookies) {
            if hostcall::add_header(RESPONSE_HEADERS, b"set-cookie", c.as_bytes()).is_err() {
                log(
                    LogLevel::Warn,
                    "oidc-filter: cannot set a session cookie on the response",
                );
            }
        }
        Action::Continue
    }
}

impl Filter {
    fn hold(&self) -> Action {
        if self.stream.holds() {
            Action::Pause
        } else {
            Action::Continue
        }
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

/// Where refreshes in flight and their outcomes are kept (see `refresh`).
const REFRESHES_KEY: &str = "oidc-filter.refreshes.v1";

/// Looks up refresh `id`, claiming it when there is no live record (compare-and-swap).
fn refresh_slot(id: &str, now: u64, until: u64) -> Result<Slot, ()> {
    for _ in 0..16 {
        let (list, cas) = hostcall::shared_data(REFRESHES_KEY).map_err(|_| ())?;
        let next = match refresh::claim(&list, id, now, until) {
            Ok(next) => next,
            Err(slot) => return Ok(slot),
        };
        match hostcall::set_shared_data(REFRESHES_KEY, &next, cas) {
            Ok(()) => return Ok(Slot::Mine),
            Err(hostcall::CAS_MISMATCH) => continue,
            Err(_) => return Err(()),
        }
    }
    Err(())
}

/// Stores refresh `id`'s outcome (compare-and-swap).
fn publish_refresh(id: &str, record: &Record, now: u64) -> Result<(), ()> {
    for _ in 0..16 {
        let (list, cas) = hostcall::shared_data(REFRESHES_KEY).map_err(|_| ())?;
        let next = refresh::publish(&list, id, record, now);
        match hostcall::set_shared_data(REFRESHES_KEY, &next, cas) {
            Ok(()) => return Ok(()),
            Err(hostcall::CAS_MISMATCH) => continue,
            Err(_) => return Err(()),
        }
    }
    Err(())
}
