//! The request state machine. Everything comes in as arguments (the request, the time, random
//! bytes, the provider's metadata and keys, a callout's result) and a decision goes out as
//! data; the wasm glue carries it out.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use crate::bearer::BearerCache;
use crate::verified::VerifiedSessions;

use crate::claims::{ClaimSpec, CLAIMS, EMAIL, SUB};
use crate::config::{Config, Policy, ProviderConfig, RedirectUrl, SameSite, Site, TokenAuthMethod};
use crate::domain::DomainPattern;
use crate::http::{
    form_encode, query_params, strip_cookies, valid_authority, CookieAttrs, Request,
};
use crate::idp::IdpState;
use crate::oidc::{self, Expected, IdTokenError, Identity, KeySet, Provider};
use crate::reason::Reason;
use crate::redirect::validate_return_url;
use crate::routes::{RouteAction, RouteMatch};
use crate::session::{
    code_challenge, derive_nonce, derive_verifier, flow_cookie_name, LoginFlow, Session, Tokens,
    FLOW_ID_LEN, MAX_CLAIM_LEN,
};
use crate::util::{b64_std, b64url};

/// How long a login may take between the redirect and the callback.
pub const LOGIN_TTL_SECS: u64 = 600;
/// Clock skew allowed on `exp` and `iat` of ID tokens.
pub const ID_TOKEN_LEEWAY_SECS: u64 = 60;
/// Seconds a client is told to wait while the provider's metadata is not loaded.
pub const RETRY_AFTER_SECS: u32 = 5;

/// A request to the identity provider, made through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    /// What it asks (`discovery`, `jwks`, `token`, `refresh`): its metrics' label.
    pub endpoint: &'static str,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// A reply the filter sends itself. `reason` is a stable code, also sent in
/// `x-oidc-filter-reason`; `detail` goes to the log only and never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub reason: Reason,
    pub detail: Option<String>,
}

/// What to do to a request that goes on upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forward {
    /// Header names to remove.
    pub remove: Vec<Cow<'static, str>>,
    /// The session whose identity goes upstream (`identity_headers`, set replacing any of the
    /// same name): shared with the VM's cache, and read in place by `header_ops`.
    pub identity: Option<Rc<Session>>,
    /// `Set-Cookie` lines for the response (a refreshed session, or a new last-seen mark).
    pub set_cookies: Vec<String>,
    /// A line to log (a refresh), without secrets.
    pub log: Option<String>,
    /// How the request was let through (metrics and the decision log).
    pub via: Via,
}

/// How a request that goes upstream was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    /// A valid session.
    #[default]
    Session,
    /// A valid bearer token (`skip_jwt_bearer_tokens`).
    Bearer,
    /// No sign-in needed: a `skip` route, `skip_auth_routes`, a CORS preflight.
    Skipped,
    /// A host with `"auth": false`.
    Unprotected,
}

impl Via {
    /// The label of this decision in `oidc_filter_decisions_total`.
    pub fn code(self) -> &'static str {
        match self {
            Via::Session => "session",
            Via::Bearer => "bearer",
            Via::Skipped => "skipped",
            Via::Unprotected => "unprotected",
        }
    }
}

/// One change to the request header map, as the proxy-wasm ABI makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp<'a> {
    /// Remove every header of this name.
    Remove(&'a [u8]),
    /// Remove every header of this name, then add this one.
    Replace(&'a [u8], Cow<'a, [u8]>),
    /// Add a header, keeping those of the same name.
    Add(&'a [u8], Cow<'a, [u8]>),
}

/// The host calls that carry out `fwd` on `raw` (the proxy's request headers, as read), and
/// take our cookies out of every `Cookie` header (dropping one left empty). Each call costs a
/// crossing into the host, so there is one per header touched and none for the rest; headers
/// left alone keep their exact bytes.
pub fn header_ops<'a>(
    cfg: &'a Config,
    raw: &[(&'a [u8], &'a [u8])],
    fwd: &'a Forward,
) -> Vec<HeaderOp<'a>> {
    let set = match &fwd.identity {
        Some(s) => identity_headers(cfg, s, true),
        None => Vec::new(),
    };
    let mut ops = Vec::with_capacity(fwd.remove.len() + set.len() + 1);
    for name in &fwd.remove {
        if !set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            ops.push(HeaderOp::Remove(name.as_bytes()));
        }
    }
    let mut count = 0;
    let mut stripped = false;
    let mut kept: Vec<Cow<'a, [u8]>> = Vec::with_capacity(1);
    for &(_, v) in raw
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(b"cookie"))
    {
        count += 1;
        match strip_cookies(v, |n| is_our_cookie(cfg, n)) {
            None => kept.push(Cow::Borrowed(v)),
            Some(rest) => {
                stripped = true;
                if !rest.is_empty() {
                    kept.push(Cow::Owned(rest));
                }
            }
        }
    }
    if stripped {
        if count == 1 && kept.len() == 1 {
            ops.extend(kept.pop().map(|v| HeaderOp::Replace(b"cookie", v)));
        } else {
            ops.push(HeaderOp::Remove(b"cookie"));
            ops.extend(kept.into_iter().map(|v| HeaderOp::Add(b"cookie", v)));
        }
    }
    // A header the request does not have is added (Envoy then skips the search for values to
    // replace); one it has, in any spelling, is replaced.
    for (k, v) in set {
        let k = k.as_bytes();
        let v = match v {
            Cow::Borrowed(v) => Cow::Borrowed(v.as_bytes()),
            Cow::Owned(v) => Cow::Owned(v.into_bytes()),
        };
        if raw.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)) {
            ops.push(HeaderOp::Replace(k, v));
        } else {
            ops.push(HeaderOp::Add(k, v));
        }
    }
    ops
}

/// The login a callback spends: its cookie's name and how long that cookie could be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginClaim {
    pub id: String,
    pub expires_at: u64,
}

/// A login waiting for the token endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// Index into `Config::providers`: the provider whose login cookie the callback held.
    pub provider: usize,
    pub nonce: String,
    pub return_url: String,
    pub flow_cookie: String,
    pub host: String,
    /// Chunk cookies of the session the callback request carried (`name_1` …): those the new
    /// session does not use are cleared.
    pub chunks_present: Vec<String>,
}

// One Decision per request, made and moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Continue(Forward),
    Reply(LocalReply),
    /// Claim `claim` (one code exchange per login: see `replay::claim`); if it was claimed
    /// already, send `replayed`. Else send the callout, pause the request, then call
    /// `on_token_response`.
    ExchangeCode {
        callout: Callout,
        pending: PendingLogin,
        claim: LoginClaim,
        replayed: LocalReply,
    },
    /// The session is due for a refresh (`cookie_refresh`): see `refresh`.
    Refresh(Box<crate::refresh::Plan>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOutcome {
    Reply(LocalReply),
    /// The ID token names a key we do not have: refetch the JWKS and call again.
    RefetchJwks(String),
}

/// The provider as the filter currently knows it; `None` until loaded.
pub struct Idp<'a> {
    pub provider: &'a Provider,
    pub keys: &'a KeySet,
}

/// What is known of each provider, by index into `Config::providers`.
pub trait Idps {
    fn idp(&self, provider: usize) -> Option<Idp<'_>>;

    /// Whether `kid` was refetched for moments ago and is still not among `provider`'s keys.
    fn kid_refused(&self, _provider: usize, _kid: &str, _now: u64) -> bool {
        false
    }
}

impl Idps for Vec<IdpState> {
    fn idp(&self, provider: usize) -> Option<Idp<'_>> {
        let s = self.get(provider)?;
        Some(Idp {
            provider: s.provider.as_ref()?,
            keys: s.keys.as_ref()?,
        })
    }

    fn kid_refused(&self, provider: usize, kid: &str, now: u64) -> bool {
        self.get(provider).is_some_and(|s| s.kid_refused(kid, now))
    }
}

pub struct Ctx<'a> {
    pub config: &'a Config,
    pub idps: &'a dyn Idps,
    pub now: u64,
    /// Verified bearer tokens (`None`: bearer tokens are validated each time).
    pub bearer: Option<&'a RefCell<BearerCache>>,
    /// Verified session cookies (`None`: each is verified each time).
    pub sessions: Option<&'a RefCell<VerifiedSessions>>,
}

/// `ping_path` (200) and `ready_path` (200 once every provider's metadata and keys are
/// loaded, else 503), on any host; `None` for other paths.
fn probe(ctx: &Ctx<'_>, req: &Request) -> Option<LocalReply> {
    let cfg = ctx.config;
    let path = req.path_only();
    let plain = |reason: Reason, body: &str| LocalReply {
        status: reason.status(),
        headers: vec![
            ("content-type".into(), "text/plain; charset=utf-8".into()),
            ("cache-control".into(), "no-store".into()),
            ("x-oidc-filter-reason".into(), reason.code().into()),
        ],
        body: body.into(),
        reason,
        detail: None,
    };
    if cfg.ping_path.as_deref() == Some(path) {
        return Some(plain(Reason::Ping, "OK\n"));
    }
    if cfg.ready_path.as_deref() == Some(path) {
        let waiting: Vec<&str> = cfg
            .providers
            .iter()
            .enumerate()
            .filter(|(i, _)| ctx.idps.idp(*i).is_none())
            .map(|(_, p)| p.name.as_str())
            .collect();
        if waiting.is_empty() {
            return Some(plain(Reason::Ready, "OK\n"));
        }
        let mut r = not_ready();
        r.detail = Some(format!("not ready: {}", waiting.join(", ")));
        return Some(r);
    }
    None
}

/// oauth2-proxy's `/oauth2/userinfo`: the session's identity as JSON.
#[cfg_attr(oidc_size, optimize(size), inline(never))]
fn userinfo(s: &Session) -> LocalReply {
    let mut body = serde_json::json!({
        "user": s.sub(),
        "email": s.email(),
        "preferredUsername": s.claims[crate::claims::PREFERRED_USERNAME],
    });
    if !s.groups.is_empty() {
        body["groups"] = serde_json::json!(s.groups);
    }
    LocalReply {
        status: Reason::UserInfo.status(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "no-store".into()),
            (
                "x-oidc-filter-reason".into(),
                Reason::UserInfo.code().into(),
            ),
        ],
        body: body.to_string(),
        reason: Reason::UserInfo,
        detail: None,
    }
}

/// A request on a protected host: its provider, and the policy the host sets.
struct Here<'a> {
    config: &'a Config,
    /// Index of `p` in `Config::providers`.
    index: usize,
    p: &'a ProviderConfig,
    policy: &'a Policy,
    idp: Option<Idp<'a>>,
    now: u64,
    sessions: Option<&'a RefCell<VerifiedSessions>>,
}

impl<'a> Ctx<'a> {
    fn here(&self, index: usize, policy: &'a Policy) -> Option<Here<'a>> {
        Some(Here {
            config: self.config,
            index,
            p: self.config.providers.get(index)?,
            policy,
            idp: self.idps.idp(index),
            now: self.now,
            sessions: self.sessions,
        })
    }
}

fn phrase(status: u32) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

pub fn error_reply(reason: Reason, detail: Option<String>) -> LocalReply {
    let status = reason.status();
    LocalReply {
        status,
        headers: vec![
            ("content-type".into(), "text/plain; charset=utf-8".into()),
            ("cache-control".into(), "no-store".into()),
            ("x-oidc-filter-reason".into(), reason.code().into()),
        ],
        body: format!("{status} {}: {reason}\n", phrase(status)),
        reason,
        detail,
    }
}

fn redirect(location: String, cookies: Vec<String>, reason: Reason) -> LocalReply {
    let mut headers = vec![
        ("location".to_string(), location),
        ("cache-control".to_string(), "no-store".to_string()),
        (
            "x-oidc-filter-reason".to_string(),
            reason.code().to_string(),
        ),
    ];
    for c in cookies {
        headers.push(("set-cookie".to_string(), c));
    }
    LocalReply {
        status: reason.status(),
        headers,
        body: String::new(),
        reason,
        detail: None,
    }
}

fn not_ready() -> LocalReply {
    let mut r = error_reply(
        Reason::IdpNotReady,
        Some("provider metadata or keys not loaded yet".into()),
    );
    r.headers
        .push(("retry-after".into(), RETRY_AFTER_SECS.to_string()));
    r
}

/// Entry point for every request's headers: the host's site first (a provider and policy, no
/// auth, or denied), then the path.
/// `random` yields 32 fresh random bytes (or `None` if the host has none); it is called only
/// when a login starts.
pub fn on_request(
    ctx: &Ctx<'_>,
    req: &Request,
    random: &mut dyn FnMut() -> Option<[u8; 32]>,
) -> Decision {
    let host = req.host();
    on_request_at(ctx, req, ctx.config.site_for(&host), random)
}

/// `on_request` with the request's site (`Config::site_for` of its host) already looked up.
pub fn on_request_at(
    ctx: &Ctx<'_>,
    req: &Request,
    site: &Site,
    random: &mut dyn FnMut() -> Option<[u8; 32]>,
) -> Decision {
    let cfg = ctx.config;
    if let Some(r) = probe(ctx, req) {
        return Decision::Reply(r);
    }
    let (index, policy) = match site {
        Site::Protect { provider, policy } => (*provider, policy),
        Site::Pass => return Decision::Continue(forward_via(cfg, req, Via::Unprotected)),
        Site::Deny => {
            return Decision::Reply(error_reply(
                Reason::HostNotConfigured,
                Some("no hosts entry matches this host".into()),
            ))
        }
    };
    // Classify on the path alone, by exact match.
    let path = req.path_only();
    if path == cfg.callback_path {
        return on_callback(ctx, req);
    }
    let Some(here) = ctx.here(index, policy) else {
        return Decision::Reply(error_reply(Reason::InternalError, None));
    };
    if path == cfg.sign_out_path {
        return Decision::Reply(sign_out(&here, req));
    }
    if path == cfg.start_path {
        let target = return_target(cfg, req, rd_param(req).as_deref(), &cfg.whitelist_domains);
        return Decision::Reply(redirect_to_authorization_endpoint(
            &here, req, random, target,
        ));
    }
    // `routes`: the first entry for this method and path decides: refused, passed without a
    // session, or this entry's policy instead of the host's. Not for our own endpoints.
    let (policy, here) =
        if path == cfg.auth_path {
            (policy, here)
        } else {
            match crate::routes::route_for(&policy.routes, &req.method, &req.path) {
                RouteMatch::None => (policy, here),
                RouteMatch::Ambiguous => return Decision::Reply(error_reply(
                    Reason::PathAmbiguous,
                    Some(
                        "path with ;, \\, an encoded / or .. above the root, on a host with routes"
                            .into(),
                    ),
                )),
                RouteMatch::Rule(r) => match &r.action {
                    RouteAction::Deny => {
                        return Decision::Reply(error_reply(
                            Reason::RouteDenied,
                            Some(format!("route {}", r.source)),
                        ))
                    }
                    RouteAction::Skip => {
                        return Decision::Continue(forward_via(cfg, req, Via::Skipped))
                    }
                    RouteAction::Allow(p) => match ctx.here(index, p) {
                        Some(h) => (&**p, h),
                        None => return Decision::Reply(error_reply(Reason::InternalError, None)),
                    },
                },
            }
        };
    // oauth2-proxy's --skip-auth-preflight: CORS preflights carry no cookies. They pass
    // without an identity (and without any identity header a client put on them).
    if cfg.skip_auth_preflight && is_cors_preflight(req) {
        return Decision::Continue(forward_via(cfg, req, Via::Skipped));
    }
    // skip_auth_routes: anchored on the normalised path; no identity goes with them. Our own
    // endpoints are never skipped.
    if path != cfg.auth_path && crate::routes::skips(&policy.skip_routes, &req.method, &req.path) {
        return Decision::Continue(forward_via(cfg, req, Via::Skipped));
    }
    // skip_jwt_bearer_tokens: a JWT in `Authorization: Bearer` stands for a session (and a
    // bad one is refused as such, RFC 6750); without one, the session decides.
    let bearer = policy
        .bearer
        .then(|| crate::bearer::bearer_token(req))
        .flatten();
    let session = match bearer {
        Some(token) => match bearer_session(ctx, index, policy, token) {
            Ok(state) => state,
            Err(reply) => return Decision::Reply(reply),
        },
        None => current_session(&here, req),
    };
    if path == cfg.userinfo_path {
        return Decision::Reply(match session {
            SessionState::Valid(s) => userinfo(&s),
            SessionState::Denied(reason) => denied(reason),
            SessionState::None => unauthorized(policy.bearer),
        });
    }
    let auth = path == cfg.auth_path;
    if let (None, SessionState::Valid(s)) = (bearer, &session) {
        if let Some(d) = keep_session(&here, req, s, auth, policy.bearer, random) {
            return d;
        }
    }
    if auth {
        return Decision::Reply(auth_endpoint(cfg, req, session, policy.bearer));
    }
    match session {
        SessionState::Valid(s) => {
            let mut f = forward(cfg, req, Some(&s));
            if bearer.is_some() {
                f.via = Via::Bearer;
            }
            Decision::Continue(f)
        }
        // RFC 6750 §3.1: a valid token that may not pass.
        SessionState::Denied(reason) if bearer.is_some() => {
            Decision::Reply(insufficient(denied(reason)))
        }
        // Signed in but refused: a clear 403, never a login that would end the same way.
        SessionState::Denied(reason) => Decision::Reply(denied(reason)),
        SessionState::None if is_navigation(req) => {
            // The URL asked for becomes the return URL only through the same validation as rd.
            let target = return_target(cfg, req, Some(&req.path), &[]);
            Decision::Reply(redirect_to_authorization_endpoint(
                &here, req, random, target,
            ))
        }
        SessionState::None => Decision::Reply(unauthorized(policy.bearer)),
    }
}

/// A bearer token's identity, checked against the host's policy as a session is.
fn bearer_session(
    ctx: &Ctx<'_>,
    index: usize,
    policy: &Policy,
    token: &str,
) -> Result<SessionState, LocalReply> {
    let mut fresh = BearerCache::default();
    let mut held = ctx.bearer.and_then(|c| c.try_borrow_mut().ok());
    let cache = held.as_deref_mut().unwrap_or(&mut fresh);
    let (s, unverified) =
        crate::bearer::authenticate(ctx.config, ctx.idps, cache, index, token, ctx.now)?;
    if unverified && !policy.allow_unverified_email {
        return Ok(SessionState::Denied(Reason::EmailUnverified));
    }
    Ok(match crate::policy::check(policy, &s) {
        Ok(()) => SessionState::Valid(s),
        Err(r) => SessionState::Denied(r),
    })
}

/// RFC 6750 §3.1 `insufficient_scope` on a 403 for a bearer token.
fn insufficient(mut r: LocalReply) -> LocalReply {
    r.headers.push((
        "www-authenticate".into(),
        "Bearer realm=\"oidc-filter\", error=\"insufficient_scope\"".into(),
    ));
    r
}

/// 401; a host that takes bearer tokens says so too (RFC 6750 §3).
fn unauthorized(bearer: bool) -> LocalReply {
    let mut r = error_reply(Reason::Unauthenticated, None);
    r.headers.push((
        "www-authenticate".into(),
        "Cookie realm=\"oidc-filter\"".into(),
    ));
    if bearer {
        r.headers.push((
            "www-authenticate".into(),
            "Bearer realm=\"oidc-filter\"".into(),
        ));
    }
    r
}

/// Fetch §3.2.2, a CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`,
/// and no body. Anything else that merely looks like one is a request like any other.
pub fn is_cors_preflight(req: &Request) -> bool {
    req.method == "OPTIONS"
        && req.header("origin").is_some_and(|o| !o.is_empty())
        && req
            .header("access-control-request-method")
            .is_some_and(|m| !m.is_empty())
        && !req.body_follows
        && req.header("transfer-encoding").is_none()
        && req.header("content-length").is_none_or(|l| l.trim() == "0")
}

/// Where to send the user after login or sign-out: `raw` when it passes `validate_return_url`
/// and does not lead back into our own endpoints (`/oauth2/start?rd=/oauth2/start` would loop
/// through the provider, one token call per turn), else `/`.
fn return_target(
    cfg: &Config,
    req: &Request,
    raw: Option<&str>,
    whitelist: &[DomainPattern],
) -> String {
    raw.and_then(|raw| validate_return_url(raw, &req.authority, whitelist))
        .filter(|url| !is_own_endpoint(cfg, url))
        .unwrap_or_else(|| "/".to_string())
}

/// Whether a validated return URL's path is under `proxy_prefix`, or is the callback path,
/// in any spelling a browser or the proxy would normalise to it.
fn is_own_endpoint(cfg: &Config, url: &str) -> bool {
    let path = match url.strip_prefix('/') {
        Some(_) => url,
        None => match url::Url::parse(url) {
            Ok(u) => return is_own_path(cfg, u.path()),
            Err(_) => return true,
        },
    };
    // A path of plain characters (no dot segment, no escape) is asked for as it is: only
    // others need resolving.
    let head = path.split(['?', '#']).next().unwrap_or(path);
    if head.bytes().all(is_plain_path_byte) {
        return is_own_path(cfg, head);
    }
    // Resolve `.`, `..` and percent-escapes the way the browser will before it asks.
    match url::Url::parse("http://h").and_then(|b| b.join(path)) {
        Ok(u) => is_own_path(cfg, u.path()),
        Err(_) => true,
    }
}

/// A byte the WHATWG URL parser keeps as it is in a path, and that no dot segment or escape
/// is made of.
fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'/' | b'-'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn is_own_path(cfg: &Config, path: &str) -> bool {
    let own = |p: &str| is_under(p, &cfg.prefix) || is_under(p, &cfg.callback_path);
    own(path) || (path.contains('%') && own(&percent_decode(path)))
}

/// Whether `path`, its trailing slashes aside, is `base` or below it (ASCII case aside).
fn is_under(path: &str, base: &str) -> bool {
    let p = path.trim_end_matches('/').as_bytes();
    let b = base.as_bytes();
    p.get(..b.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(b))
        && (p.len() == b.len() || p.get(b.len()) == Some(&b'/'))
}

/// `%XX` escapes decoded (RFC 3986 §2.1); anything else kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b.get(i),
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (Some(b'%'), Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (Some(&c), _, _) => {
                out.push(c);
                i += 1;
            }
            (None, _, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rd_param(req: &Request) -> Option<String> {
    let params = query_params(req.query());
    let mut rds = params
        .into_iter()
        .filter(|(k, _)| k == "rd")
        .map(|(_, v)| v);
    let first = rds.next();
    if rds.next().is_some() {
        return None;
    }
    first
}

/// A browser navigating, as opposed to an API client or a script (which get 401).
pub fn is_navigation(req: &Request) -> bool {
    if !(req.method.eq_ignore_ascii_case("GET") || req.method.eq_ignore_ascii_case("HEAD")) {
        return false;
    }
    if req
        .header("x-requested-with")
        .is_some_and(|v| v.eq_ignore_ascii_case("XMLHttpRequest"))
    {
        return false;
    }
    if req
        .header("sec-fetch-mode")
        .is_some_and(|v| !v.eq_ignore_ascii_case("navigate"))
    {
        return false;
    }
    if let Some(accept) = req.header("accept") {
        let a = accept.to_ascii_lowercase();
        if a.contains("application/json") && !a.contains("text/html") {
            return false;
        }
        // A sub-resource (image, script, style) from a browser without Sec-Fetch headers: a
        // redirect would only pile up login cookies.
        if !a.is_empty() && !a.contains("text/html") && !a.contains("*/*") {
            return false;
        }
    }
    true
}

/// What a request's cookies say.
// One per request, made and moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum SessionState {
    Valid(Rc<Session>),
    /// A session of ours that the host's policy refuses (as configured now): why.
    Denied(Reason),
    None,
}

/// `verify_session` over every cookie with our name (a browser may hold several), then the
/// policy as configured now: a session issued under a wider policy or a longer
/// `cookie_expire` ends when the config narrows.
fn current_session(here: &Here<'_>, req: &Request) -> SessionState {
    let cfg = here.config;
    let name = &here.p.cookie_name;
    let scope = here.p.scope(name);
    let mut denied = None;
    // One pass over the Cookie headers (a sealed session's may be 20 KB): the cookies of our
    // name (a browser may send several, from other paths or domains: each is tried) and the
    // first of each chunk name.
    let (mut first, mut more) = (None, Vec::new());
    let mut chunks: [Option<&str>; crate::session::MAX_CHUNKS] = Default::default();
    for (k, v) in req.cookies() {
        if k == name {
            if first.is_none() {
                first = Some(v);
            } else {
                more.push(v);
            }
        } else if crate::session::is_chunk_of(name.as_bytes(), k.as_bytes()) {
            let i = k.as_bytes().last().map_or(0, |d| usize::from(d - b'0'));
            if let Some(slot @ None) = chunks.get_mut(i) {
                *slot = Some(v);
            }
        }
    }
    let chunk = |i: usize| chunks.get(i).copied().flatten();
    for v in first.into_iter().chain(more) {
        let Ok(s) = verified_session(here, &scope, v, &chunk) else {
            continue;
        };
        // session_idle_timeout: unused for that long, it is over (a session from before the
        // timeout was configured counts from its login).
        let idle = cfg.cookie.idle_secs;
        if idle > 0 && here.now >= seen_at(&s).saturating_add(idle) {
            continue;
        }
        match crate::policy::check(here.policy, &s) {
            Ok(()) => return SessionState::Valid(s),
            Err(r) => denied = denied.or(Some(r)),
        }
    }
    denied.map_or(SessionState::None, SessionState::Denied)
}

/// The session cookie `first` (with its chunks) holds: from the VM's cache of verified
/// cookies when these exact values verified before (the lifetime checked again), else
/// verified and then kept.
fn verified_session<'v>(
    here: &Here<'_>,
    scope: &crate::session::Scope<'_>,
    first: &'v str,
    chunk: &dyn Fn(usize) -> Option<&'v str>,
) -> Result<Rc<Session>, crate::session::SessionError> {
    let max_age = here.config.cookie.expire_secs;
    let key = here
        .sessions
        .and_then(|_| crate::verified::cookie_key(first, chunk));
    if let (Some(cache), Some(key)) = (here.sessions, &key) {
        if let Some(s) = cache.borrow_mut().get(here.index, key) {
            s.check_age(here.now, max_age)?;
            return Ok(s);
        }
    }
    let s = Session::verify_cookies(&here.config.keys, scope, first, chunk, here.now, max_age)?;
    let s = Rc::new(s);
    if let (Some(cache), Some(key)) = (here.sessions, &key) {
        cache.borrow_mut().put(here.index, key, &s, here.now);
    }
    Ok(s)
}

/// 403 for a user the policy refuses: its reason, and the way out (another account).
fn denied(reason: Reason) -> LocalReply {
    let mut r = error_reply(reason, None);
    r.body
        .push_str("Signed in, but not allowed here. Sign out to use another account.\n");
    r
}

fn is_our_cookie(cfg: &Config, name: &[u8]) -> bool {
    cfg.is_session_cookie(name) || is_flow_cookie(cfg, name)
}

fn is_flow_cookie(cfg: &Config, name: &[u8]) -> bool {
    name.strip_prefix(cfg.cookie.name.as_bytes())
        .is_some_and(|rest| rest.starts_with(b"_csrf_"))
}

/// The identity headers of session `s` (upstream, or in an `/oauth2/auth` reply), borrowing
/// the session's values where they go as they are.
fn identity_headers<'a>(
    cfg: &'a Config,
    s: &'a Session,
    for_upstream: bool,
) -> Vec<(&'a str, Cow<'a, str>)> {
    let mut out = Vec::with_capacity(2 * CLAIMS.len());
    let mut push = |name: fn(&ClaimSpec) -> &'static str| {
        for (spec, value) in CLAIMS.iter().zip(&s.claims) {
            if !value.is_empty() {
                out.push((name(spec), Cow::Borrowed(value.as_str())));
            }
        }
    };
    if cfg.pass_user_headers && for_upstream {
        push(|c| c.forwarded);
    }
    if cfg.set_xauthrequest || !for_upstream {
        push(|c| c.auth_request);
    }
    if cfg.pass_groups && !s.groups.is_empty() {
        let joined = s.groups.join(",");
        if cfg.pass_user_headers && for_upstream {
            out.push(("x-forwarded-groups", Cow::Owned(joined.clone())));
        }
        if cfg.set_xauthrequest || !for_upstream {
            out.push(("x-auth-request-groups", Cow::Owned(joined)));
        }
    }
    for (header, path) in &cfg.claim_headers {
        if let Some(values) = s.attr(path).filter(|v| !v.is_empty()) {
            out.push((header.as_str(), Cow::Owned(values.join(","))));
        }
    }
    if let Some(t) = &s.tokens {
        if cfg.pass_access_token && !t.access_token.is_empty() {
            if cfg.pass_user_headers && for_upstream {
                out.push((
                    "x-forwarded-access-token",
                    Cow::Borrowed(t.access_token.as_str()),
                ));
            }
            if cfg.set_xauthrequest || !for_upstream {
                out.push((
                    "x-auth-request-access-token",
                    Cow::Borrowed(t.access_token.as_str()),
                ));
            }
        }
        let bearer = if for_upstream {
            cfg.pass_authorization_header
        } else {
            cfg.set_authorization_header
        };
        if bearer && !t.id_token.is_empty() {
            out.push((
                "authorization",
                Cow::Owned(format!("Bearer {}", t.id_token)),
            ));
        }
    }
    out
}

fn forward_via(cfg: &Config, req: &Request, via: Via) -> Forward {
    let mut f = forward(cfg, req, None);
    f.via = via;
    f
}

/// The request goes upstream without any identity header the client sent and with the
/// session's identity (if any); `header_ops` also takes our cookies out.
fn forward(cfg: &Config, req: &Request, s: Option<&Rc<Session>>) -> Forward {
    let mut f = Forward::default();
    for (name, _) in &req.headers {
        if cfg.is_identity_header(name) && !f.remove.iter().any(|r| r == name) {
            f.remove.push(Cow::Owned(name.to_string()));
        }
    }
    f.identity = s.cloned();
    f
}

/// oauth2-proxy's `/oauth2/auth`: 202 with the identity in response headers, 401 without a
/// session, 403 when the host's policy or the query's `allowed_*` refuse it.
fn auth_endpoint(cfg: &Config, req: &Request, session: SessionState, bearer: bool) -> LocalReply {
    let s = match session {
        SessionState::Valid(s) => s,
        SessionState::Denied(reason) => return denied(reason),
        SessionState::None => return unauthorized(bearer),
    };
    auth_ok(cfg, &query_params(req.query()), &s)
}

/// `/oauth2/auth` for a valid session: 403 when the query's `allowed_*` refuse it, else 202
/// with the identity.
fn auth_ok(cfg: &Config, query: &[(String, String)], s: &Session) -> LocalReply {
    if let Err(reason) = crate::policy::check_auth_query(query, s) {
        return denied(reason);
    }
    LocalReply {
        status: 202,
        headers: identity_headers(cfg, s, false)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_owned()))
            .chain([(
                "x-oidc-filter-reason".into(),
                Reason::Authenticated.code().into(),
            )])
            .collect(),
        body: String::new(),
        reason: Reason::Authenticated,
        detail: None,
    }
}

/// `redirect_url` resolved against the request's own scheme and `:authority`.
fn redirect_uri(cfg: &Config, req: &Request) -> Option<String> {
    match &cfg.redirect_url {
        RedirectUrl::Absolute(u) => Some(u.clone()),
        RedirectUrl::Path(p) => absolute_url(req, p),
    }
}

/// Login cookies are set on Path=/ (a `__Host-` cookie must be, or the browser drops it), so
/// that the next login start sees them and can bound their number; they never reach the
/// upstream (see `header_ops`).
fn flow_attrs(cfg: &Config, host: &str) -> CookieAttrs {
    let mut a = CookieAttrs::session(&cfg.cookie, host);
    a.path = "/".to_string();
    // The callback is a cross-site navigation from the provider: a Strict cookie would not
    // come back with it.
    if cfg.cookie.samesite == SameSite::Strict {
        a.samesite = SameSite::Lax.as_str();
    }
    a
}

/// RFC 6749 §4.1.1 with PKCE (RFC 7636 §4.3) and a nonce (OIDC Core §3.1.2.1).
fn redirect_to_authorization_endpoint(
    here: &Here<'_>,
    req: &Request,
    random: &mut dyn FnMut() -> Option<[u8; 32]>,
    return_url: String,
) -> LocalReply {
    let cfg = here.config;
    let Some(idp) = &here.idp else {
        return not_ready();
    };
    let Some(redirect_uri) = redirect_uri(cfg, req) else {
        return error_reply(
            Reason::BadRequest,
            Some("request :authority is not a valid host".into()),
        );
    };
    let Some(key) = cfg.keys.first() else {
        return error_reply(Reason::InternalError, Some("no cookie key".into()));
    };
    let Some(random) = random() else {
        return error_reply(
            Reason::InternalError,
            Some("no randomness from the host".into()),
        );
    };
    let state = b64url(&random);
    let nonce = derive_nonce(key, &state);
    let challenge = code_challenge(&derive_verifier(key, &state));
    let Some(cookie_name) = flow_cookie_name(&cfg.cookie.name, &state) else {
        return error_reply(Reason::InternalError, Some("state too short".into()));
    };
    let flow = LoginFlow {
        expires_at: here.now + LOGIN_TTL_SECS,
        state: state.clone(),
        return_url: bounded_return_url(return_url),
    };
    let Some(value) = flow.encode(key, &here.p.scope(&cookie_name)) else {
        return error_reply(Reason::InternalError, Some("login cookie too large".into()));
    };
    let location = crate::util::with_query_pairs(
        &idp.provider.authorization_endpoint,
        &[
            ("response_type", "code"),
            ("client_id", here.p.client_id.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("scope", here.p.scope.as_str()),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    );
    let attrs = flow_attrs(cfg, &req.host());
    let mut cookies: Vec<String> = stale_logins(cfg, here.now, req)
        .iter()
        .map(|name| attrs.clear(name))
        .collect();
    cookies.push(attrs.set(&cookie_name, &value, LOGIN_TTL_SECS));
    redirect(location, cookies, Reason::LoginRedirect)
}

/// A return URL longer than this is not kept in the login cookie: its query is dropped (and
/// if the path alone is still too long, the user lands on `/`).
pub const MAX_KEPT_RETURN_URL: usize = 1024;
/// Logins in progress kept per browser; starting one more evicts the oldest. Together with
/// `MAX_KEPT_RETURN_URL` this bounds what login cookies add to a request to about 6 KB.
pub const MAX_LOGINS_IN_PROGRESS: usize = 4;

fn bounded_return_url(url: String) -> String {
    if url.len() <= MAX_KEPT_RETURN_URL {
        return url;
    }
    let path = url.split(['?', '#']).next().unwrap_or("/");
    if path.len() <= MAX_KEPT_RETURN_URL && !path.is_empty() {
        path.to_string()
    } else {
        "/".to_string()
    }
}

/// The login cookies to clear when a new login starts: every one that is not valid (forged,
/// expired, from an old key) and, of the valid ones, all but the newest
/// `MAX_LOGINS_IN_PROGRESS - 1`.
fn stale_logins(cfg: &Config, now: u64, req: &Request) -> Vec<String> {
    let mut valid: Vec<(u64, &str)> = Vec::new();
    let mut stale: Vec<String> = Vec::new();
    for (name, value) in req.cookies() {
        if !is_flow_cookie(cfg, name.as_bytes()) || stale.iter().any(|s| s == name) {
            continue;
        }
        match login_of(cfg, name, value, now) {
            Some((_, flow, _)) => valid.push((flow.expires_at, name)),
            None => stale.push(name.to_string()),
        }
    }
    valid.sort_by_key(|v| std::cmp::Reverse(v.0));
    let mut kept: Vec<&str> = Vec::new();
    for (_, name) in valid {
        if kept.contains(&name) {
            continue;
        }
        if kept.len() + 1 < MAX_LOGINS_IN_PROGRESS {
            kept.push(name);
        } else if !stale.iter().any(|s| s == name) {
            stale.push(name.to_string());
        }
    }
    stale.retain(|s| !kept.contains(&s.as_str()));
    stale
}

/// The provider a login cookie was made for (its MAC is bound to that provider), with the
/// login and the index of the key that signed it.
fn login_of(cfg: &Config, name: &str, value: &str, now: u64) -> Option<(usize, LoginFlow, usize)> {
    cfg.providers.iter().enumerate().find_map(|(i, p)| {
        LoginFlow::verify(&cfg.keys, &p.scope(name), value, now)
            .ok()
            .map(|(flow, key)| (i, flow, key))
    })
}

fn is_state_shaped(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 6749 §4.1.2: the authorization response at the redirect URI.
#[cfg_attr(oidc_size, optimize(size), inline(never))]
fn on_callback(ctx: &Ctx<'_>, req: &Request) -> Decision {
    let cfg = ctx.config;
    let params = query_params(req.query());
    let one = |name: &str| -> Result<Option<&str>, ()> {
        let mut it = params.iter().filter(|(k, _)| k == name);
        let first = it.next().map(|(_, v)| v.as_str());
        if it.next().is_some() {
            return Err(());
        }
        Ok(first)
    };
    let (Ok(code), Ok(state), Ok(error), Ok(iss)) =
        (one("code"), one("state"), one("error"), one("iss"))
    else {
        return Decision::Reply(error_reply(
            Reason::CallbackInvalid,
            Some("repeated callback parameter".into()),
        ));
    };
    // RFC 6749 §4.1.2.1: the provider reports an error. Only a known code is echoed.
    if let Some(e) = error {
        const KNOWN: &[&str] = &[
            "invalid_request",
            "unauthorized_client",
            "access_denied",
            "unsupported_response_type",
            "invalid_scope",
            "server_error",
            "temporarily_unavailable",
            "interaction_required",
            "login_required",
            "account_selection_required",
            "consent_required",
            "invalid_request_uri",
            "invalid_request_object",
            "request_not_supported",
            "request_uri_not_supported",
            "registration_not_supported",
        ];
        let code = if KNOWN.contains(&e) { e } else { "other" };
        let mut r = error_reply(Reason::IdpError, Some(format!("provider error {code}")));
        r.body = format!("403 Forbidden: idp_error: {code}\n");
        return Decision::Reply(r);
    }
    let (Some(code), Some(state)) = (code, state) else {
        return Decision::Reply(error_reply(
            Reason::CallbackInvalid,
            Some("callback without code or state".into()),
        ));
    };
    if code.is_empty() || code.len() > 4096 || !is_state_shaped(state) {
        return Decision::Reply(error_reply(
            Reason::CallbackInvalid,
            Some("malformed code or state".into()),
        ));
    }
    let Some(cookie_name) = flow_cookie_name(&cfg.cookie.name, state) else {
        return Decision::Reply(error_reply(Reason::CallbackInvalid, None));
    };
    let flow = req
        .cookies()
        .filter(|(k, _)| *k == cookie_name)
        .find_map(|(_, v)| login_of(cfg, &cookie_name, v, ctx.now));
    let Some((index, flow, key_index)) = flow else {
        return Decision::Reply(error_reply(
            Reason::LoginExpired,
            Some("no valid login cookie for this state".into()),
        ));
    };
    if !crate::util::ct_eq(flow.state.as_bytes(), state.as_bytes()) {
        return Decision::Reply(error_reply(Reason::StateMismatch, None));
    }
    // The login's own provider, whatever host the callback reached; its policy is the one of
    // the host the session is for (see `on_token_response`).
    let policy = login_policy(cfg, index, &req.host());
    let Some(here) = ctx.here(index, policy) else {
        return Decision::Reply(error_reply(Reason::InternalError, None));
    };
    // RFC 9207: if the provider names itself, it must be this login's issuer (mix-up defence).
    if iss.is_some_and(|i| i != here.p.issuer) {
        return Decision::Reply(error_reply(
            Reason::CallbackInvalid,
            Some("iss parameter is not the issuer".into()),
        ));
    }
    let Some(idp) = &here.idp else {
        return Decision::Reply(not_ready());
    };
    let Some(redirect_uri) = redirect_uri(cfg, req) else {
        return Decision::Reply(error_reply(Reason::BadRequest, None));
    };
    let Some(key) = cfg.keys.get(key_index) else {
        return Decision::Reply(error_reply(Reason::InternalError, None));
    };
    let verifier = derive_verifier(key, state);
    let grant = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    let Some(callout) = token_request(here.p, idp.provider, &grant) else {
        return Decision::Reply(error_reply(
            Reason::InternalError,
            Some("no cluster for the token endpoint's host (see idp_clusters)".into()),
        ));
    };
    debug_assert!(cookie_name.len() > FLOW_ID_LEN);
    // A second callback for the same login (a reload, the back button, a replayed URL) gets
    // no second code exchange: with a session it goes where the login was going, else a clear
    // refusal. Either way the login cookie goes.
    let clear = flow_attrs(cfg, &req.host()).clear(&cookie_name);
    let replayed = if matches!(current_session(&here, req), SessionState::Valid(_)) {
        redirect(
            flow.return_url.clone(),
            vec![clear],
            Reason::LoginAlreadyComplete,
        )
    } else {
        let mut r = error_reply(
            Reason::CallbackReplayed,
            Some("this login's code was exchanged already".into()),
        );
        r.headers.push(("set-cookie".into(), clear));
        r
    };
    Decision::ExchangeCode {
        callout,
        claim: LoginClaim {
            id: cookie_name.clone(),
            expires_at: flow.expires_at,
        },
        replayed,
        pending: PendingLogin {
            provider: index,
            nonce: derive_nonce(key, state),
            return_url: flow.return_url,
            flow_cookie: cookie_name,
            host: req.host(),
            chunks_present: chunks_present(req, &here.p.cookie_name),
        },
    }
}

/// The chunk cookies (`name_1` …) of session cookie `name` that `req` carries.
fn chunks_present(req: &Request, name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (k, _) in req.cookies() {
        if crate::session::is_chunk_of(name.as_bytes(), k.as_bytes()) && !out.iter().any(|o| o == k)
        {
            out.push(k.to_string());
        }
    }
    out
}

/// Set-Cookie lines for a session's cookie values (chunk 0 first), and clears of the chunk
/// cookies in `present` it no longer uses.
fn session_cookies(
    attrs: &CookieAttrs,
    name: &str,
    values: &[String],
    present: &[String],
    max_age: u64,
) -> Vec<String> {
    let mut out: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| attrs.set(&crate::session::chunk_name(name, i), v, max_age))
        .collect();
    for c in present {
        let used = (1..values.len()).any(|i| crate::session::chunk_name(name, i) == *c);
        if !used {
            out.push(attrs.clear(c));
        }
    }
    out
}

/// A token request with `grant` and our client authentication: RFC 6749 §4.1.3 (the code,
/// with the PKCE verifier, RFC 7636 §4.5) or §6 (a refresh).
#[cfg_attr(oidc_size, optimize(size))]
pub(crate) fn token_request(
    cfg: &ProviderConfig,
    provider: &Provider,
    grant: &[(&str, &str)],
) -> Option<Callout> {
    let url = &provider.token_endpoint;
    let (cluster, authority) = cfg.route_for(url)?;
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), path),
        (":authority".to_string(), authority),
        (
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept".to_string(), "application/json".to_string()),
    ];
    let mut form: Vec<(&str, &str)> = grant.to_vec();
    match cfg.token_auth {
        TokenAuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: each part form-urlencoded before Basic encoding.
            let user = form_encode(&[("", &cfg.client_id)]);
            let pass = form_encode(&[("", cfg.client_secret.expose())]);
            let creds = format!(
                "{}:{}",
                user.trim_start_matches('='),
                pass.trim_start_matches('=')
            );
            headers.push((
                "authorization".to_string(),
                format!("Basic {}", b64_std(creds.as_bytes())),
            ));
        }
        TokenAuthMethod::ClientSecretPost => {
            form.push(("client_id", &cfg.client_id));
            form.push(("client_secret", cfg.client_secret.expose()));
        }
    }
    let endpoint = if grant.first().is_some_and(|(_, g)| *g == "refresh_token") {
        "refresh"
    } else {
        "token"
    };
    Some(Callout {
        endpoint,
        cluster,
        headers,
        body: form_encode(&form).into_bytes(),
        timeout_ms: cfg.idp.timeout_ms,
    })
}

/// The policy a login of provider `index` that came back on `host` is checked against: the
/// host's when it is one of that provider's, else the top-level one.
fn login_policy<'a>(cfg: &'a Config, index: usize, host: &str) -> &'a Policy {
    match cfg.site_for(host) {
        Site::Protect { provider, policy } if *provider == index => policy,
        _ => &cfg.default_policy,
    }
}

/// A claim fit for a header, taken as it is or not at all (empty): bounded length, no
/// control, separator, invisible or bidi-override character anywhere, and no whitespace at
/// either end (a proxy or upstream would trim it, and then see another value than we checked).
pub fn clean_claim(v: Option<&str>) -> String {
    match v {
        Some(s)
            if s.len() <= MAX_CLAIM_LEN
                && !s.starts_with(char::is_whitespace)
                && !s.ends_with(char::is_whitespace)
                && !s.chars().any(is_unsafe_in_header) =>
        {
            s.to_string()
        }
        _ => String::new(),
    }
}

fn is_unsafe_in_header(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'              // line and paragraph separators
            | '\u{200b}'..='\u{200f}'            // zero-width characters, LRM, RLM
            | '\u{202a}'..='\u{202e}'            // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}'            // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'            // bidi isolates
            | '\u{feff}'                         // byte-order mark
            | '\u{fff9}'..='\u{fffb}') // interlinear annotations
}

/// The token endpoint answered (`status` is `None` when the call failed or timed out).
#[cfg_attr(oidc_size, optimize(size))]
pub fn on_token_response(
    ctx: &Ctx<'_>,
    pending: &PendingLogin,
    status: Option<u32>,
    body: &[u8],
    may_refetch_jwks: bool,
) -> TokenOutcome {
    let cfg = ctx.config;
    let fail = |r: LocalReply| TokenOutcome::Reply(r);
    let policy = login_policy(cfg, pending.provider, &pending.host);
    let Some(here) = ctx.here(pending.provider, policy) else {
        return fail(error_reply(Reason::InternalError, None));
    };
    let Some(idp) = &here.idp else {
        return fail(not_ready());
    };
    let status = match status {
        None => {
            return fail(error_reply(
                Reason::TokenRequestFailed,
                Some("token endpoint unreachable or timed out".into()),
            ))
        }
        Some(s) => s,
    };
    if status != 200 {
        return fail(error_reply(
            Reason::TokenRequestFailed,
            Some(format!("token endpoint answered {status}")),
        ));
    }
    let id_token = match oidc::id_token_from_response(body) {
        Ok(t) => t,
        Err(why) => return fail(error_reply(Reason::TokenResponseInvalid, Some(why.into()))),
    };
    let expected = Expected {
        issuer: &idp.provider.issuer,
        client_id: &here.p.client_id,
        nonce: &pending.nonce,
        now: ctx.now,
        leeway: ID_TOKEN_LEEWAY_SECS,
    };
    let identity: Identity = match oidc::validate_id_token(&id_token, idp.keys, &expected) {
        Ok(i) => i,
        Err(IdTokenError::UnknownKid(kid)) if may_refetch_jwks => {
            return TokenOutcome::RefetchJwks(kid)
        }
        Err(e) => {
            return fail(error_reply(
                Reason::IdTokenInvalid,
                Some(format!("ID token refused: {}", e.describe())),
            ))
        }
    };
    let email = clean_claim(identity.email());
    if !email.is_empty() && identity.email_verified == Some(false) && !policy.allow_unverified_email
    {
        return fail(error_reply(Reason::EmailUnverified, None));
    }
    let Some(key) = cfg.keys.first() else {
        return fail(error_reply(Reason::InternalError, None));
    };
    let (groups, attrs) = here.p.carry.take(&identity.other);
    let session = Session {
        expires_at: ctx.now + cfg.cookie.expire_secs,
        issued_at: ctx.now,
        claims: std::array::from_fn(|i| match i {
            SUB => clean_claim(Some(&identity.sub)),
            EMAIL => email.clone(),
            _ => clean_claim(identity.claims[i].as_deref()),
        }),
        groups,
        attrs,
        tokens: kept_tokens(cfg.keep, &id_token, body, ctx.now),
    };
    if session.sub().is_empty() {
        return fail(error_reply(
            Reason::IdTokenInvalid,
            Some("unusable sub".into()),
        ));
    }
    // The rules the session will meet on every request, checked once here too: a user who
    // may not pass gets the reason now, with no session. A user the host refuses but the
    // route of the return URL allows (a `routes` entry wider than its host) gets the session.
    if let Err(reason) = crate::policy::check(policy, &session) {
        let route = pending
            .return_url
            .starts_with('/')
            .then(|| crate::routes::route_for(&policy.routes, "GET", &pending.return_url));
        let by_route = match route {
            Some(RouteMatch::Rule(r)) => match &r.action {
                RouteAction::Allow(p) => crate::policy::check(p, &session).is_ok(),
                _ => false,
            },
            _ => false,
        };
        if !by_route {
            return fail(denied(reason));
        }
    }
    let name = &here.p.cookie_name;
    let Some(values) = session.encode_cookies(key, &here.p.scope(name)) else {
        let tokens = session.tokens.as_ref().map_or(0, |t| {
            t.id_token.len() + t.access_token.len() + t.refresh_token.len()
        });
        let why = format!(
            "the session would not fit in {} cookies ({} groups, {} claims, {tokens} bytes of tokens carried)",
            if session.tokens.is_some() { crate::session::MAX_CHUNKS } else { 1 },
            session.groups.len(),
            session.attrs.len()
        );
        // Counts only: nothing of the user's or the provider's in the page.
        let mut r = error_reply(Reason::SessionTooLarge, None);
        r.body.push_str(&format!(
            "Signed in at the provider, but {why}. The administrator can narrow what sessions carry.\n"
        ));
        r.detail = Some(why);
        return fail(r);
    };
    let attrs = CookieAttrs::session(&cfg.cookie, &pending.host);
    let mut cookies = session_cookies(
        &attrs,
        name,
        &values,
        &pending.chunks_present,
        cfg.cookie.expire_secs,
    );
    cookies.push(flow_attrs(cfg, &pending.host).clear(&pending.flow_cookie));
    let mut r = redirect(pending.return_url.clone(), cookies, Reason::LoginComplete);
    r.detail = Some("login complete".into());
    TokenOutcome::Reply(r)
}

/// The tokens a session keeps (`Config::keep`), from the validated ID token and the token
/// response; `None` when it keeps none.
fn kept_tokens(keep: crate::config::Keep, id_token: &str, body: &[u8], now: u64) -> Option<Tokens> {
    if !keep.any() {
        return None;
    }
    let other = oidc::other_tokens(body);
    Some(Tokens {
        id_token: if keep.id_token {
            id_token.to_string()
        } else {
            String::new()
        },
        access_token: if keep.access_token {
            other.access_token
        } else {
            String::new()
        },
        refresh_token: if keep.refresh_token {
            other.refresh_token
        } else {
            String::new()
        },
        access_expires_at: other.expires_in.map_or(0, |e| now.saturating_add(e)),
        refreshed_at: now,
        seen_at: now,
    })
}

/// Clears the session cookie with the attributes it was set with, then sends the user to a
/// validated `rd` (or `/`).
#[cfg_attr(oidc_size, optimize(size), inline(never))]
fn sign_out(here: &Here<'_>, req: &Request) -> LocalReply {
    let cfg = here.config;
    let target = rd_param(req)
        .and_then(|rd| validate_return_url(&rd, &req.authority, &cfg.whitelist_domains))
        .unwrap_or_else(|| "/".to_string());
    let attrs = CookieAttrs::session(&cfg.cookie, &req.host());
    let name = &here.p.cookie_name;
    let mut clears = vec![attrs.clear(name)];
    clears.extend(chunks_present(req, name).iter().map(|c| attrs.clear(c)));
    // RP-Initiated Logout 1.0 §2: the provider ends its session too, then sends the browser
    // to the validated target (which must be registered there as a post-logout URI).
    let end = here
        .idp
        .as_ref()
        .and_then(|i| i.provider.end_session_endpoint.as_ref())
        .filter(|_| cfg.end_session);
    if let (Some(end), Some(post)) = (end, absolute_url(req, &target)) {
        let hint = signed_in(here, req)
            .and_then(|s| s.tokens)
            .map(|t| t.id_token)
            .filter(|t| !t.is_empty());
        let mut pairs = Vec::with_capacity(3);
        if let Some(h) = &hint {
            pairs.push(("id_token_hint", h.as_str()));
        }
        pairs.push(("client_id", here.p.client_id.as_str()));
        pairs.push(("post_logout_redirect_uri", post.as_str()));
        let location = crate::util::with_query_pairs(end, &pairs);
        let mut r = redirect(location, clears, Reason::SignedOut);
        r.detail = Some(format!(
            "signed out; ending the provider's session ({})",
            if hint.is_some() {
                "id_token_hint"
            } else {
                "client_id"
            }
        ));
        return r;
    }
    redirect(target, clears, Reason::SignedOut)
}

/// The session the request carries, whatever the policy says of it.
fn signed_in(here: &Here<'_>, req: &Request) -> Option<Session> {
    let cfg = here.config;
    let name = &here.p.cookie_name;
    let scope = here.p.scope(name);
    let chunk = |i: usize| {
        let n = crate::session::chunk_name(name, i);
        req.cookies().find(|(k, _)| *k == n).map(|(_, v)| v)
    };
    req.cookies().filter(|(k, _)| k == name).find_map(|(_, v)| {
        Session::verify_cookies(
            &cfg.keys,
            &scope,
            v,
            &chunk,
            here.now,
            cfg.cookie.expire_secs,
        )
        .ok()
    })
}

/// `target` (a validated return URL: a path, or absolute) as an absolute URL, a path
/// resolved against the request's own scheme and `:authority`.
fn absolute_url(req: &Request, target: &str) -> Option<String> {
    if !target.starts_with('/') {
        return Some(target.to_string());
    }
    if !valid_authority(&req.authority) {
        return None;
    }
    let scheme = if req.scheme.eq_ignore_ascii_case("http") {
        "http"
    } else {
        "https"
    };
    Some([scheme, "://", &req.authority, target].concat())
}

// ---- A session that goes on: the last-seen mark, and refresh (`cookie_refresh`) ----

/// The session's last-seen mark (`session_idle_timeout`); its login for a session without one.
fn seen_at(s: &Session) -> u64 {
    s.tokens
        .as_ref()
        .map_or(s.issued_at, |t| t.seen_at.max(s.issued_at))
}

/// How often the last-seen mark is re-issued: a quarter of the idle timeout, at most every
/// five minutes, so cookies do not change on every request.
pub fn mark_every(idle_secs: u64) -> u64 {
    (idle_secs / 4).clamp(1, 300)
}

/// Whether `s` is due for a refresh: its tokens are `cookie_refresh` old, or the access token
/// sent upstream has expired; and it holds a refresh token.
fn refresh_due(cfg: &Config, s: &Session, now: u64) -> bool {
    let Some(t) = &s.tokens else { return false };
    let every = cfg.cookie.refresh_secs;
    every > 0
        && !t.refresh_token.is_empty()
        && (now >= t.refreshed_at.saturating_add(every)
            || (cfg.pass_access_token && t.access_expires_at != 0 && now >= t.access_expires_at))
}

/// A valid session (from cookies) on a request that goes on: a refresh when one is due, a new
/// last-seen mark when that is due; `None` when neither (the request goes as usual).
fn keep_session(
    here: &Here<'_>,
    req: &Request,
    s: &Session,
    auth: bool,
    bearer: bool,
    random: &mut dyn FnMut() -> Option<[u8; 32]>,
) -> Option<Decision> {
    let cfg = here.config;
    let now = here.now;
    if refresh_due(cfg, s, now) {
        if let Some(plan) = refresh_plan(here, req, s, auth, bearer, random) {
            return Some(Decision::Refresh(Box::new(plan)));
        }
    }
    let idle = cfg.cookie.idle_secs;
    if idle == 0 || now < seen_at(s).saturating_add(mark_every(idle)) {
        return None;
    }
    let mut marked = s.clone();
    let mut t = marked.tokens.take().unwrap_or_default();
    t.seen_at = now;
    if t.refreshed_at == 0 {
        t.refreshed_at = s.issued_at;
    }
    marked.tokens = Some(t);
    let pending = pending_refresh(here, req, s, auth);
    let cookies = session_set_cookies(cfg, &pending, &marked, now)?;
    Some(match pass_as(cfg, &pending, &marked, cookies, None) {
        crate::refresh::Pass::Forward(f) => Decision::Continue(f),
        crate::refresh::Pass::Reply(r) => Decision::Reply(r),
    })
}

fn pending_refresh(
    here: &Here<'_>,
    req: &Request,
    s: &Session,
    auth: bool,
) -> crate::refresh::PendingRefresh {
    let cfg = here.config;
    crate::refresh::PendingRefresh {
        provider: here.index,
        host: req.host(),
        method: req.method.to_string(),
        path: req.path.to_string(),
        session: s.clone(),
        chunks_present: chunks_present(req, &here.p.cookie_name),
        remove: forward(cfg, req, None).remove,
        auth_query: auth.then(|| query_params(req.query())),
    }
}

/// The `Set-Cookie` lines of session `s` for `pending`'s host (chunks it no longer uses
/// cleared), for the rest of its lifetime; `None` when it does not fit.
fn session_set_cookies(
    cfg: &Config,
    pending: &crate::refresh::PendingRefresh,
    s: &Session,
    now: u64,
) -> Option<Vec<String>> {
    let p = cfg.providers.get(pending.provider)?;
    let key = cfg.keys.first()?;
    let values = s.encode_cookies(key, &p.scope(&p.cookie_name))?;
    Some(cookies_of(cfg, pending, s, &values, now))
}

fn cookies_of(
    cfg: &Config,
    pending: &crate::refresh::PendingRefresh,
    s: &Session,
    values: &[String],
    now: u64,
) -> Vec<String> {
    let name = cfg
        .providers
        .get(pending.provider)
        .map_or(cfg.cookie.name.as_str(), |p| p.cookie_name.as_str());
    let attrs = CookieAttrs::session(&cfg.cookie, &pending.host);
    session_cookies(
        &attrs,
        name,
        values,
        &pending.chunks_present,
        s.expires_at.saturating_sub(now).max(1),
    )
}

/// The policy of `pending`'s request as configured now: its host's, or its route's.
fn pending_policy<'a>(
    cfg: &'a Config,
    pending: &crate::refresh::PendingRefresh,
) -> Option<&'a Policy> {
    let policy = match cfg.site_for(&pending.host) {
        Site::Protect { provider, policy } if *provider == pending.provider => policy,
        _ => return None,
    };
    if pending.auth_query.is_some() {
        return Some(policy);
    }
    match crate::routes::route_for(&policy.routes, &pending.method, &pending.path) {
        RouteMatch::None => Some(policy),
        RouteMatch::Rule(r) => match &r.action {
            RouteAction::Allow(p) => Some(&**p),
            _ => None,
        },
        RouteMatch::Ambiguous => None,
    }
}

/// How `pending`'s request goes on as session `s`, setting `cookies` in the response.
fn pass_as(
    cfg: &Config,
    pending: &crate::refresh::PendingRefresh,
    s: &Session,
    cookies: Vec<String>,
    log: Option<String>,
) -> crate::refresh::Pass {
    use crate::refresh::Pass;
    let checked = match pending_policy(cfg, pending) {
        Some(policy) => crate::policy::check(policy, s),
        None => Err(Reason::RouteDenied),
    };
    let mut reply = match (checked, &pending.auth_query) {
        (Err(reason), _) => denied(reason),
        (Ok(()), Some(q)) => auth_ok(cfg, q, s),
        (Ok(()), None) => {
            let mut f = Forward {
                remove: pending.remove.clone(),
                ..Forward::default()
            };
            f.identity = Some(Rc::new(s.clone()));
            f.set_cookies = cookies;
            f.log = log;
            return Pass::Forward(f);
        }
    };
    reply
        .headers
        .extend(cookies.into_iter().map(|c| ("set-cookie".to_string(), c)));
    if reply.detail.is_none() {
        reply.detail = log;
    }
    Pass::Reply(reply)
}

/// The plan of a due refresh; `None` when it cannot be made now (the provider is not
/// loaded, no cluster for its token endpoint): the request goes on as it is.
fn refresh_plan(
    here: &Here<'_>,
    req: &Request,
    s: &Session,
    auth: bool,
    bearer: bool,
    random: &mut dyn FnMut() -> Option<[u8; 32]>,
) -> Option<crate::refresh::Plan> {
    let cfg = here.config;
    let idp = here.idp.as_ref()?;
    let rt = s.tokens.as_ref()?.refresh_token.as_str();
    let callout = token_request(
        here.p,
        idp.provider,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )?;
    let pending = pending_refresh(here, req, s, auth);
    let fallback = pass_as(cfg, &pending, s, Vec::new(), None);
    let attrs = CookieAttrs::session(&cfg.cookie, &pending.host);
    let clears = std::iter::once(attrs.clear(&here.p.cookie_name))
        .chain(pending.chunks_present.iter().map(|c| attrs.clear(c)));
    let mut relogin = if !auth && is_navigation(req) {
        let target = return_target(cfg, req, Some(&req.path), &[]);
        redirect_to_authorization_endpoint(here, req, random, target)
    } else {
        let mut r = unauthorized(bearer);
        r.reason = Reason::RefreshRefused;
        r.status = Reason::RefreshRefused.status();
        r.body = error_reply(Reason::RefreshRefused, None).body;
        if let Some(h) = r
            .headers
            .iter_mut()
            .find(|(k, _)| k == "x-oidc-filter-reason")
        {
            h.1 = Reason::RefreshRefused.code().into();
        }
        r
    };
    relogin
        .headers
        .extend(clears.map(|c| ("set-cookie".to_string(), c)));
    Some(crate::refresh::Plan {
        id: crate::refresh::record_id(rt),
        callout,
        pending,
        fallback,
        relogin,
    })
}

/// How a refresh went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The new session's cookie values, and how the request goes on as it.
    Done(Vec<String>, crate::refresh::Pass),
    /// The provider refused the grant: a new login.
    Revoked(String),
    /// No usable answer: the request goes on as it is.
    Failed(String),
}

/// The token endpoint's answer to a refresh (RFC 6749 §5.1 / §5.2; OIDC Core §12.2).
#[cfg_attr(oidc_size, optimize(size), inline(never))]
pub fn on_refresh_response(
    ctx: &Ctx<'_>,
    pending: &crate::refresh::PendingRefresh,
    status: Option<u32>,
    body: &[u8],
) -> Refreshed {
    let cfg = ctx.config;
    let status = match status {
        None => return Refreshed::Failed("token endpoint unreachable or timed out".into()),
        Some(s) => s,
    };
    if status == 400 || status == 401 {
        let code = oauth_error_code(body).unwrap_or("");
        // Refreshed moments ago by another replica (its refresh token spent there)? For a
        // short while after the session fell due, a refusal leaves it working as it is.
        let due = pending.session.tokens.as_ref().map_or(0, |t| {
            t.refreshed_at.saturating_add(cfg.cookie.refresh_secs)
        });
        if ctx.now < due.saturating_add(crate::refresh::refusal_grace(cfg.cookie.refresh_secs)) {
            return Refreshed::Failed(format!(
                "token endpoint answered {status} {code} within the grace period after the session fell due"
            ));
        }
        return Refreshed::Revoked(format!("token endpoint answered {status} {code}"));
    }
    if status != 200 {
        return Refreshed::Failed(format!("token endpoint answered {status}"));
    }
    let (Some(p), Some(idp)) = (
        cfg.providers.get(pending.provider),
        ctx.idps.idp(pending.provider),
    ) else {
        return Refreshed::Failed("provider not loaded".into());
    };
    let other = oidc::other_tokens(body);
    if other.access_token.is_empty() {
        return Refreshed::Failed("token response without an access_token".into());
    }
    let old = &pending.session;
    let mut s = old.clone();
    let id_token = match oidc::id_token_from_response(body) {
        Ok(raw) => {
            let expected = Expected {
                issuer: &idp.provider.issuer,
                client_id: &p.client_id,
                nonce: "",
                now: ctx.now,
                leeway: ID_TOKEN_LEEWAY_SECS,
            };
            let identity =
                match oidc::validate_refreshed_id_token(&raw, idp.keys, &expected, old.sub()) {
                    Ok(i) => i,
                    Err(e) => {
                        return Refreshed::Failed(format!(
                            "refreshed ID token refused: {}",
                            e.describe()
                        ))
                    }
                };
            let email = clean_claim(identity.email());
            let allow_unverified =
                pending_policy(cfg, pending).is_some_and(|p| p.allow_unverified_email);
            if !email.is_empty() && identity.email_verified == Some(false) && !allow_unverified {
                return Refreshed::Revoked("the refreshed ID token's email is not verified".into());
            }
            s.claims = std::array::from_fn(|i| match i {
                SUB => clean_claim(Some(&identity.sub)),
                EMAIL => email.clone(),
                _ => clean_claim(identity.claims[i].as_deref()),
            });
            (s.groups, s.attrs) = p.carry.take(&identity.other);
            Some(raw)
        }
        Err(_) => None,
    };
    let before = old.tokens.clone().unwrap_or_default();
    s.tokens = Some(Tokens {
        id_token: match id_token {
            Some(t) if cfg.keep.id_token => t,
            _ => before.id_token,
        },
        access_token: if cfg.keep.access_token {
            other.access_token
        } else {
            String::new()
        },
        refresh_token: if other.refresh_token.is_empty() {
            before.refresh_token
        } else {
            other.refresh_token
        },
        access_expires_at: other.expires_in.map_or(0, |e| ctx.now.saturating_add(e)),
        refreshed_at: ctx.now,
        seen_at: ctx.now,
    });
    let Some(key) = cfg.keys.first() else {
        return Refreshed::Failed("no key".into());
    };
    let Some(values) = s.encode_cookies(key, &p.scope(&p.cookie_name)) else {
        return Refreshed::Failed("the refreshed session would not fit in its cookies".into());
    };
    let cookies = cookies_of(cfg, pending, &s, &values, ctx.now);
    let pass = pass_as(cfg, pending, &s, cookies, Some("session refreshed".into()));
    Refreshed::Done(values, pass)
}

/// A refresh another request made (its cookie `values`): the request goes on as that session
/// and sets its cookies; `None` when they are not a session of ours (a rotated key).
pub fn adopt_refreshed(
    ctx: &Ctx<'_>,
    pending: &crate::refresh::PendingRefresh,
    values: &[String],
) -> Option<crate::refresh::Pass> {
    let cfg = ctx.config;
    let p = cfg.providers.get(pending.provider)?;
    let first = values.first()?;
    let s = Session::verify_cookies(
        &cfg.keys,
        &p.scope(&p.cookie_name),
        first,
        &|i| values.get(i).map(String::as_str),
        ctx.now,
        cfg.cookie.expire_secs,
    )
    .ok()?;
    let cookies = cookies_of(cfg, pending, &s, values, ctx.now);
    Some(pass_as(cfg, pending, &s, cookies, None))
}

/// RFC 6749 §5.2's `error`, when it is one of the registered codes' shape (it is logged).
fn oauth_error_code(body: &[u8]) -> Option<&'static str> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.as_str()?;
    [
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    ]
    .into_iter()
    .find(|c| *c == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let cfg = serde_json::json!({
            "oidc_issuer_url": "https://issuer.example.com",
            "client_id": "app", "client_secret": "x", "idp_cluster": "idp",
            "cookie_secret": "q83vEjRWeJCrze8SNFZ4kA==",
        });
        Config::parse(cfg.to_string().as_bytes(), &|_| None).unwrap()
    }

    /// The path taken as it is when it has only plain characters decides as resolving it
    /// with the URL parser does.
    #[test]
    fn plain_paths_decide_as_resolved_ones() {
        let cfg = cfg();
        let resolved = |path: &str| {
            let u = url::Url::parse("http://h").unwrap().join(path).unwrap();
            is_own_path(&cfg, u.path())
        };
        let mut own = 0;
        for p in [
            "/",
            "/oauth2",
            "/oauth2/",
            "/oauth2//",
            "/OAuth2/sign_out",
            "/oauth2/start?rd=/x",
            "/oauth2/callback#f",
            "/oauth2x",
            "/oauth2x/page",
            "/oauth",
            "/x/oauth2/start",
            "/oauth2;x",
            "/oauth2:x/y",
            "/oauth2@",
            "/a//b",
            "/oauth2/callback/x",
            "/callback",
            "/oauth2(x)",
            "/oauth2&y=1",
            "/~oauth2",
            "/oauth2+",
        ] {
            let head = p.split(['?', '#']).next().unwrap();
            assert!(head.bytes().all(is_plain_path_byte), "{p}");
            assert_eq!(is_own_endpoint(&cfg, p), resolved(p), "{p}");
            own += usize::from(resolved(p));
        }
        assert_eq!(own, 7);
        // Dots and escapes are resolved first.
        for p in [
            "/x/../oauth2/start",
            "/oauth2/./start",
            "/%6Fauth2/start",
            "/oauth2%2Fstart",
        ] {
            assert!(is_own_endpoint(&cfg, p), "{p}");
        }
        assert!(!is_own_endpoint(&cfg, "/oauth2/../x"));
    }
}
