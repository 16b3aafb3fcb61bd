//! The engine and the per-request state machine.
//!
//! `Engine` is owned by the root context (one per worker VM): the validated config, what is
//! known of each provider (metadata, keys, fetch timers), the fetches in flight, and the
//! logins waiting for a key refetch, which it answers when the keys come (single flight: one
//! JWKS fetch serves every waiting login of that provider).
//!
//! `Stream` is one request. It is fed by `handle_*` calls, each returning the next `Step` the
//! glue carries out; its state is consumed by every transition:
//!
//! ```text
//! Fresh ──handle_request──▶ Forwarded, or Done        (a local reply)
//!   └──▶ AwaitingClaim ──handle_claim──▶ AwaitingDispatch ──handle_dispatch──▶ AwaitingToken
//!                └──▶ Done (replayed)          └──▶ Done (failed)                  │
//!                                            handle_callout ◀────────────────────┘
//!                                              ├──▶ Done (session set, or refused)
//!                                              └──▶ AwaitingKeys ──(Engine answers)──▶ Done
//! ```

use std::cell::RefCell;

use crate::bearer::BearerCache;
use crate::config::Config;
use crate::config::Site;
use crate::flow::{
    self, Callout, Ctx, Decision, Forward, LocalReply, LoginClaim, PendingLogin, TokenOutcome,
    RETRY_AFTER_SECS,
};
use crate::http::Request;
use crate::idp::{FetchKind, IdpState, UnknownKid, KEY_WAIT_SECS};
use crate::reason::{Level, Reason};
use crate::refresh::{Pass, Plan, Record, Slot};
use crate::telemetry::Label;
use crate::verified::VerifiedSessions;
use flow::Refreshed;

/// Logins that may wait for keys at once, per VM; more are answered 503 with Retry-After.
pub const MAX_KEY_WAITERS: usize = 256;

/// A fetch of a provider's metadata or keys that the glue is to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub provider: usize,
    pub kind: FetchKind,
    pub callout: Callout,
    /// For log lines (a provider's own URL: no secret in it).
    pub url: String,
}

/// A callout's answer as the glue read it. `status` `None`: no response (reset, timeout);
/// `too_large`: the body exceeded what the glue reads, and was left unread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub status: Option<u32>,
    pub body: Vec<u8>,
    pub too_large: bool,
}

/// A line for the proxy's log (never a secret, token, cookie or body).
pub type LogLine = (Level, String);

enum KeyWait {
    Waiting,
    /// Too many waiters: answer this.
    Busy(LocalReply),
    /// No refetch now: validate with the keys held.
    Refused(Box<KeyWaiter>),
}

struct KeyWaiter {
    stream: u32,
    provider: usize,
    kid: String,
    since: u64,
    /// The provider's keys were fetched since it began to wait: answer it now.
    keys_came: bool,
    pending: PendingLogin,
    status: Option<u32>,
    body: Vec<u8>,
}

pub struct Engine {
    pub config: Config,
    idps: Vec<IdpState>,
    /// Fetches sent, by the host's callout token.
    fetches: Vec<(u32, usize, FetchKind)>,
    waiters: Vec<KeyWaiter>,
    /// Verified bearer tokens (`skip_jwt_bearer_tokens`).
    bearer: RefCell<BearerCache>,
    /// Key ids bearer tokens named, by fetch index, until the next JWKS response of that
    /// issuer says whether they exist (else they are refused for a while).
    bearer_kids: Vec<(usize, String)>,
    /// Session cookies verified before (see `verified`).
    sessions: RefCell<VerifiedSessions>,
}

impl Engine {
    /// One fetch state per provider, then per extra JWT issuer (`Config::sources`).
    pub fn new(config: Config) -> Self {
        let idps = config.sources().map(IdpState::new).collect();
        Engine {
            config,
            idps,
            fetches: Vec::new(),
            waiters: Vec::new(),
            bearer: RefCell::new(BearerCache::default()),
            bearer_kids: Vec::new(),
            sessions: RefCell::new(VerifiedSessions::default()),
        }
    }

    /// Bearer tokens served from the cache, and validated anew.
    pub fn bearer_stats(&self) -> (u64, u64, usize) {
        let c = self.bearer.borrow();
        (c.hits, c.misses, c.len())
    }

    /// Key ids bearer tokens named that their issuer's keys lack: each asks for a refetch
    /// (rate limited as a login's does).
    fn note_unknown_kids(&mut self, now: u64) {
        let kids = std::mem::take(&mut self.bearer.get_mut().unknown_kids);
        for (fetch, kid) in kids {
            let Some(state) = self.idps.get_mut(fetch) else {
                continue;
            };
            if state.on_unknown_kid(&kid, now) == UnknownKid::Wait
                && self.bearer_kids.len() < MAX_KEY_WAITERS
                && !self
                    .bearer_kids
                    .iter()
                    .any(|(f, k)| *f == fetch && *k == kid)
            {
                self.bearer_kids.push((fetch, kid));
            }
        }
    }

    /// The core's view at `now`, for `flow`.
    pub fn ctx(&self, now: u64) -> Ctx<'_> {
        Ctx {
            config: &self.config,
            idps: &self.idps,
            now,
            bearer: Some(&self.bearer),
            sessions: Some(&self.sessions),
        }
    }

    pub fn idp(&self, provider: usize) -> Option<&IdpState> {
        self.idps.get(provider)
    }

    /// The fetches due now, each marked in flight; the glue sends each and reports back with
    /// `fetch_sent`. A due fetch that cannot be routed is logged and retried after a backoff.
    pub fn poll_fetches(&mut self, now: u64, log: &mut Vec<LogLine>) -> Vec<Fetch> {
        let mut out = Vec::new();
        for (i, (state, p)) in self.idps.iter_mut().zip(self.config.sources()).enumerate() {
            match state.poll(p, now) {
                Ok(Some((kind, callout, url))) => out.push(Fetch {
                    provider: i,
                    kind,
                    callout,
                    url,
                }),
                Ok(None) => {}
                Err(why) => log.push((Level::Warn, format!("provider {}: {why}", p.name))),
            }
        }
        out
    }

    /// The glue sent `fetch` (`Ok(token)`) or could not (`Err(why)`).
    pub fn fetch_sent(
        &mut self,
        fetch: &Fetch,
        sent: Result<u32, String>,
        now: u64,
        log: &mut Vec<LogLine>,
    ) {
        match sent {
            Ok(token) => self.fetches.push((token, fetch.provider, fetch.kind)),
            Err(e) => {
                let msg = self.record(fetch.provider, fetch.kind, None, &[], now);
                let name = self.provider_name(fetch.provider);
                log.push((
                    Level::Warn,
                    format!("provider {name}: {}: {e}; {}", fetch.url, msg.1),
                ));
            }
        }
    }

    fn provider_name(&self, i: usize) -> &str {
        self.config.source(i).map_or("?", |p| p.name.as_str())
    }

    #[cfg_attr(oidc_size, optimize(size))]
    fn record(
        &mut self,
        provider: usize,
        kind: FetchKind,
        status: Option<u32>,
        body: &[u8],
        now: u64,
    ) -> LogLine {
        let (Some(state), Some(p)) = (self.idps.get_mut(provider), self.config.source(provider))
        else {
            return (Level::Warn, "unknown provider".into());
        };
        match state.on_response(p, kind, status, body, now) {
            Ok(m) => (Level::Info, m),
            Err(m) => (Level::Warn, m),
        }
    }

    /// A callout answered on the root context. `false`: the token is not one of our fetches.
    /// After a JWKS response, the logins waiting for that provider's keys are answered (see
    /// `poll_answers`).
    pub fn handle_fetch_response(
        &mut self,
        token: u32,
        resp: &Response,
        now: u64,
        log: &mut Vec<LogLine>,
    ) -> bool {
        let Some(pos) = self.fetches.iter().position(|f| f.0 == token) else {
            return false;
        };
        let (_, provider, kind) = self.fetches.swap_remove(pos);
        // A body too large to read is no document: status 0 makes it a failed fetch.
        let status = if resp.too_large {
            resp.status.map(|_| 0)
        } else {
            resp.status
        };
        let (level, msg) = self.record(provider, kind, status, &resp.body, now);
        log.push((
            level,
            format!("provider {}: {msg}", self.provider_name(provider)),
        ));
        if kind == FetchKind::Jwks {
            // The kids bearer tokens asked for that the answer still lacks are refused for a
            // while (as a waiting login's are in `poll_answers`).
            let asked = std::mem::take(&mut self.bearer_kids);
            for (fetch, kid) in asked {
                match self.idps.get_mut(fetch) {
                    Some(state) if fetch == provider => {
                        if !state.keys.as_ref().is_some_and(|k| k.has_kid(&kid)) {
                            state.still_unknown(&kid, now);
                        }
                    }
                    _ => self.bearer_kids.push((fetch, kid)),
                }
            }
            for w in self.waiters.iter_mut().filter(|w| w.provider == provider) {
                // Due now: answered by the next `poll_answers`.
                w.keys_came = true;
            }
        }
        true
    }

    /// A login's ID token names a key its provider's JWKS lacks: wait for a refetch (one per
    /// provider, rate limited, shared by every waiting login), or an answer now.
    fn wait_for_keys(&mut self, w: KeyWaiter, now: u64) -> KeyWait {
        let full = self.waiters.len() >= MAX_KEY_WAITERS;
        let Some(state) = self.idps.get_mut(w.provider) else {
            return KeyWait::Refused(Box::new(w));
        };
        if full {
            let mut r = flow::error_reply(
                Reason::KeyWaitersFull,
                Some("too many logins waiting for keys".into()),
            );
            r.headers
                .push(("retry-after".into(), RETRY_AFTER_SECS.to_string()));
            return KeyWait::Busy(r);
        }
        match state.on_unknown_kid(&w.kid, now) {
            UnknownKid::Wait => {
                self.waiters.push(w);
                KeyWait::Waiting
            }
            UnknownKid::Refuse => KeyWait::Refused(Box::new(w)),
        }
    }

    /// The waiting logins to answer now (keys came, or they waited `KEY_WAIT_SECS`), each
    /// validated once more with the keys held now; a kid still missing is remembered as
    /// refused. The glue sends each reply on its stream's context.
    pub fn poll_answers(&mut self, now: u64) -> Vec<Answer> {
        // Called on every tick: nothing to sort out (or allocate) when nobody waits.
        if self.waiters.is_empty() {
            return Vec::new();
        }
        let (due, rest): (Vec<KeyWaiter>, Vec<KeyWaiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.keys_came || now >= w.since + KEY_WAIT_SECS);
        self.waiters = rest;
        let mut out = Vec::with_capacity(due.len());
        for w in due {
            if let Some(state) = self.idps.get_mut(w.provider) {
                if !state.keys.as_ref().is_some_and(|k| k.has_kid(&w.kid)) {
                    state.still_unknown(&w.kid, now);
                }
            }
            let r =
                match flow::on_token_response(&self.ctx(now), &w.pending, w.status, &w.body, false)
                {
                    TokenOutcome::Reply(r) => r,
                    TokenOutcome::RefetchJwks(_) => flow::error_reply(Reason::InternalError, None),
                };
            out.push(Answer {
                stream: w.stream,
                provider: w.provider,
                reply: r,
            });
        }
        out
    }

    /// The stream ended (answered, or the client left): forget what waits for it.
    pub fn forget(&mut self, stream: u32) {
        self.waiters.retain(|w| w.stream != stream);
    }

    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

/// A waiting login's reply (`Engine::poll_answers`), for its stream, of its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub stream: u32,
    pub provider: usize,
    pub reply: LocalReply,
}

/// What the glue does next for a stream.
// One Step per transition, made and moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Let the request go on upstream with these changes (`flow::header_ops`).
    Forward(Forward),
    /// Send this reply; the stream is done.
    Reply(LocalReply),
    /// Record this login as spent in the VMs' shared data (compare-and-swap), then call
    /// `handle_claim` with the outcome.
    Claim(LoginClaim),
    /// Send this callout to the token endpoint, then call `handle_dispatch`.
    Dispatch(Callout),
    /// Keep the request paused; a callout response or the engine answers it.
    Wait,
    /// Look up (and claim, if there is none) refresh `id`'s record in the VMs' shared data
    /// until `until` (see `refresh::claim`), then call `handle_slot` with what it says.
    RefreshSlot { id: String, until: u64 },
    /// Store `record` as refresh `id`'s outcome (`refresh::publish`), then carry out `then`.
    Publish {
        id: String,
        record: Record,
        then: Box<Step>,
    },
}

enum State {
    Fresh,
    AwaitingClaim {
        callout: Callout,
        pending: PendingLogin,
        replayed: LocalReply,
    },
    AwaitingDispatch {
        pending: PendingLogin,
    },
    AwaitingToken {
        token: u32,
        pending: PendingLogin,
    },
    /// In the engine's key waiters: the engine answers it.
    AwaitingKeys,
    /// A due refresh, before its record is looked up.
    AwaitingSlot {
        plan: Box<Plan>,
    },
    AwaitingRefreshDispatch {
        plan: Box<Plan>,
    },
    AwaitingRefresh {
        token: u32,
        plan: Box<Plan>,
    },
    /// Gone on upstream: body and trailers follow it.
    Forwarded,
    /// Answered, or the client left.
    Done,
}

pub struct Stream {
    id: u32,
    state: State,
    /// The host's provider (index into `Config::providers`), for metrics.
    provider: Option<usize>,
    /// For the decision log; made only for a request that is not a plain pass.
    label: Option<Label>,
    /// Refresh outcomes (`telemetry::REFRESHES`) since the glue last took them.
    refreshes: Vec<&'static str>,
}

impl Stream {
    pub fn new(id: u32) -> Self {
        Stream {
            id,
            state: State::Fresh,
            provider: None,
            label: None,
            refreshes: Vec::new(),
        }
    }

    fn reply(&mut self, r: LocalReply) -> Step {
        self.state = State::Done;
        Step::Reply(r)
    }

    /// The request's headers. `random` yields 32 fresh random bytes (called only when a
    /// login starts).
    pub fn handle_request(
        &mut self,
        engine: &mut Engine,
        req: &Request,
        now: u64,
        random: &mut dyn FnMut() -> Option<[u8; 32]>,
    ) -> Step {
        if !matches!(self.state, State::Fresh) {
            return self.reply(flow::error_reply(Reason::InternalError, None));
        }
        let host = req.host();
        let site = engine.config.site_for(&host);
        self.provider = match site {
            Site::Protect { provider, .. } => Some(*provider),
            _ => None,
        };
        let decision = flow::on_request_at(&engine.ctx(now), req, site, random);
        if !matches!(&decision, Decision::Continue(f) if f.log.is_none()) {
            let name = self
                .provider
                .and_then(|i| engine.config.providers.get(i))
                .map_or("none", |p| p.name.as_str());
            self.label = Some(Label::new(name, &host, req.path_only()));
        }
        if !engine.bearer.get_mut().unknown_kids.is_empty() {
            engine.note_unknown_kids(now);
        }
        match decision {
            Decision::Continue(f) => {
                self.state = State::Forwarded;
                Step::Forward(f)
            }
            Decision::Reply(r) => self.reply(r),
            Decision::ExchangeCode {
                callout,
                pending,
                claim,
                replayed,
            } => {
                self.state = State::AwaitingClaim {
                    callout,
                    pending,
                    replayed,
                };
                Step::Claim(claim)
            }
            Decision::Refresh(plan) => {
                let until = now
                    .saturating_add(plan.callout.timeout_ms / 1000)
                    .saturating_add(5);
                let id = plan.id.clone();
                self.state = State::AwaitingSlot { plan };
                Step::RefreshSlot { id, until }
            }
        }
    }

    fn pass(&mut self, p: Pass) -> Step {
        match p {
            Pass::Forward(f) => {
                self.state = State::Forwarded;
                Step::Forward(f)
            }
            Pass::Reply(r) => self.reply(r),
        }
    }

    /// The request goes on as it is (the refresh failed, or another one is under way).
    fn fall_back(&mut self, plan: Plan, why: Option<String>) -> Step {
        let mut p = plan.fallback;
        if let Some(why) = why {
            let line = format!("refresh failed ({why}); the session goes on");
            match &mut p {
                Pass::Forward(f) => f.log = Some(line),
                Pass::Reply(r) => r.detail = Some(line),
            }
        }
        self.pass(p)
    }

    /// The request's provider, host and path, for the decision log (`None` for a plain pass).
    pub fn label(&self) -> Option<&Label> {
        self.label.as_ref()
    }

    /// The request's provider (index into `Config::providers`), for metrics.
    pub fn provider(&self) -> Option<usize> {
        self.provider
    }

    /// The refresh outcomes since the last call (`telemetry::REFRESHES`' `outcome`).
    pub fn take_refreshes(&mut self) -> Vec<&'static str> {
        std::mem::take(&mut self.refreshes)
    }

    /// What refresh `plan.id`'s shared record said (`Err`: the shared data failed).
    pub fn handle_slot(&mut self, engine: &mut Engine, slot: Result<Slot, ()>, now: u64) -> Step {
        let State::AwaitingSlot { plan } = std::mem::replace(&mut self.state, State::Done) else {
            return self.reply(flow::error_reply(Reason::InternalError, None));
        };
        self.refreshes.push(match &slot {
            Ok(Slot::Mine) => "started",
            Ok(Slot::Done(_)) => "shared",
            Ok(Slot::Revoked) => "refused_shared",
            Ok(Slot::InFlight) => "in_flight",
            Ok(Slot::Failed) => "backing_off",
            Err(()) => "shared_data_failed",
        });
        match slot {
            Ok(Slot::Mine) => {
                let callout = plan.callout.clone();
                self.state = State::AwaitingRefreshDispatch { plan };
                Step::Dispatch(callout)
            }
            Ok(Slot::Done(values)) => {
                match flow::adopt_refreshed(&engine.ctx(now), &plan.pending, &values) {
                    Some(p) => self.pass(p),
                    None => self.fall_back(*plan, None),
                }
            }
            Ok(Slot::Revoked) => {
                let mut r = plan.relogin;
                r.detail = Some("refresh refused moments ago: a new login".into());
                self.reply(r)
            }
            Ok(Slot::InFlight | Slot::Failed) => self.fall_back(*plan, None),
            Err(()) => self.fall_back(*plan, Some("shared data unavailable".into())),
        }
    }

    fn refreshed(&mut self, plan: Plan, outcome: Refreshed) -> Step {
        self.refreshes.push(match &outcome {
            Refreshed::Done(..) => "refreshed",
            Refreshed::Revoked(_) => "refused",
            Refreshed::Failed(_) => "failed",
        });
        let id = plan.id.clone();
        let (record, then) = match outcome {
            Refreshed::Done(values, pass) => (Record::Done(values), self.pass(pass)),
            Refreshed::Revoked(why) => {
                let mut r = plan.relogin;
                r.detail = Some(format!("refresh refused ({why}): a new login"));
                (Record::Revoked, self.reply(r))
            }
            Refreshed::Failed(why) => (Record::Failed, self.fall_back(plan, Some(why))),
        };
        Step::Publish {
            id,
            record,
            then: Box::new(then),
        }
    }

    /// The claim of `Step::Claim`: `Ok(true)` spent now, `Ok(false)` spent before, `Err` the
    /// shared data failed.
    pub fn handle_claim(&mut self, claimed: Result<bool, ()>) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitingClaim {
                callout,
                pending,
                replayed,
            } => match claimed {
                Ok(true) => {
                    self.state = State::AwaitingDispatch { pending };
                    Step::Dispatch(callout)
                }
                Ok(false) => self.reply(replayed),
                Err(()) => self.reply(flow::error_reply(
                    Reason::SharedDataUnavailable,
                    Some("cannot record the login as spent".into()),
                )),
            },
            _ => self.reply(flow::error_reply(Reason::InternalError, None)),
        }
    }

    /// The callout of `Step::Dispatch` was sent (`Ok(token)`) or not.
    pub fn handle_dispatch(&mut self, sent: Result<u32, String>) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitingRefreshDispatch { plan } => match sent {
                Ok(token) => {
                    self.state = State::AwaitingRefresh { token, plan };
                    Step::Wait
                }
                Err(e) => self.refreshed(*plan, Refreshed::Failed(e)),
            },
            State::AwaitingDispatch { pending } => match sent {
                Ok(token) => {
                    self.state = State::AwaitingToken { token, pending };
                    Step::Wait
                }
                Err(e) => self.reply(flow::error_reply(Reason::TokenRequestFailed, Some(e))),
            },
            _ => self.reply(flow::error_reply(Reason::InternalError, None)),
        }
    }

    /// A callout answered on this stream's context (`status` `None`: no response). `None`:
    /// not the callout this stream waits for; nothing to do.
    pub fn handle_callout(
        &mut self,
        engine: &mut Engine,
        token: u32,
        resp: Response,
        now: u64,
    ) -> Option<Step> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitingRefresh { token: t, plan } if t == token => {
                let outcome = if resp.too_large {
                    Refreshed::Failed("token response too large".into())
                } else {
                    flow::on_refresh_response(
                        &engine.ctx(now),
                        &plan.pending,
                        resp.status,
                        &resp.body,
                    )
                };
                Some(self.refreshed(*plan, outcome))
            }
            State::AwaitingToken { token: t, .. } if t == token && resp.too_large => {
                Some(self.reply(flow::error_reply(
                    Reason::TokenResponseInvalid,
                    Some("token response too large".into()),
                )))
            }
            State::AwaitingToken { token: t, pending } if t == token => {
                let Response { status, body, .. } = resp;
                let outcome =
                    flow::on_token_response(&engine.ctx(now), &pending, status, &body, true);
                Some(match outcome {
                    TokenOutcome::Reply(r) => self.reply(r),
                    TokenOutcome::RefetchJwks(kid) => {
                        let w = KeyWaiter {
                            stream: self.id,
                            provider: pending.provider,
                            kid,
                            since: now,
                            keys_came: false,
                            pending,
                            status,
                            body,
                        };
                        match engine.wait_for_keys(w, now) {
                            KeyWait::Waiting => {
                                self.state = State::AwaitingKeys;
                                Step::Wait
                            }
                            KeyWait::Busy(r) => self.reply(r),
                            KeyWait::Refused(w) => {
                                let ctx = engine.ctx(now);
                                match flow::on_token_response(
                                    &ctx, &w.pending, w.status, &w.body, false,
                                ) {
                                    TokenOutcome::Reply(r) => self.reply(r),
                                    TokenOutcome::RefetchJwks(_) => {
                                        self.reply(flow::error_reply(Reason::InternalError, None))
                                    }
                                }
                            }
                        }
                    }
                })
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    /// The glue cannot go on with this request (a host call failed): the reply to send.
    pub fn fail(&mut self, reason: Reason, detail: &str) -> LocalReply {
        self.state = State::Done;
        flow::error_reply(reason, Some(detail.to_string()))
    }

    /// A body chunk or trailers arrived: whether the request must stay paused (a login waits
    /// for the provider; only our reply may end it).
    pub fn holds(&self) -> bool {
        !matches!(self.state, State::Fresh | State::Forwarded)
    }

    /// The request is over (answered, or the client left).
    pub fn handle_done(&mut self, engine: &mut Engine) {
        if matches!(self.state, State::AwaitingKeys) {
            engine.forget(self.id);
        }
        self.state = State::Done;
    }
}
