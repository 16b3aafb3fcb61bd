//! Plugin configuration: raw JSON → validated, precomputed, frozen `Config`.
//!
//! Keys follow oauth2-proxy's option names where the meaning is the same, so that an
//! `OAUTH2_PROXY_COOKIE_SECRET` becomes `"cookie_secret"`. Every problem is reported as one
//! error naming its field; a config with any error is refused as a whole.

use serde_json::{Map, Value};
use url::Url;

use crate::domain::{DomainPattern, LeadingDot, Reach};
use crate::policy::{Carry, ClaimRule, RuleOp};
use crate::routes::{parse_skip_route, PathMatch, RouteAction, RouteRule, SkipRoute};
use crate::util::{b64_any_decode, parse_duration_ms, MacKey};

/// Defaults, as oauth2-proxy has them where the option exists there.
pub const DEFAULT_SCOPE: &str = "openid email profile";
pub const DEFAULT_COOKIE_NAME: &str = "_oauth2_proxy";
pub const DEFAULT_COOKIE_EXPIRE: &str = "168h";
pub const DEFAULT_PROXY_PREFIX: &str = "/oauth2";
pub const DEFAULT_IDP_TIMEOUT: &str = "5s";
pub const DEFAULT_JWKS_REFRESH: &str = "15m";
/// Minimum key material in a cookie secret: 16 bytes (128 bits).
pub const MIN_SECRET_BYTES: usize = 16;

/// A string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuthMethod {
    /// RFC 6749 §2.3.1: HTTP Basic with the form-urlencoded client id and secret.
    ClientSecretBasic,
    /// RFC 6749 §2.3.1: client id and secret in the request body.
    ClientSecretPost,
}

/// The keys derived from one cookie secret. Sessions, login flows and the values derived from a
/// login's state (PKCE verifier, nonce) each use their own key.
#[derive(Debug, Clone)]
pub struct KeySet {
    pub session: MacKey,
    pub flow: MacKey,
    pub derive: MacKey,
    /// Format-3 sessions (tokens inside): the XChaCha20-Poly1305 key, and the MAC key of
    /// their synthetic nonces.
    pub seal: SealKey,
    pub siv: MacKey,
}

/// An AEAD key that never prints.
#[derive(Clone)]
pub struct SealKey(chacha20poly1305::Key);

impl SealKey {
    pub fn as_key(&self) -> &chacha20poly1305::Key {
        &self.0
    }
}

impl core::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl KeySet {
    fn from_material(material: &[u8]) -> Option<Self> {
        let root = MacKey::new(material)?;
        let label = |l: &[u8]| root.mac(&[b"oidc-filter/v1/", l]);
        let sub = |l: &[u8]| MacKey::new(&label(l));
        Some(KeySet {
            session: sub(b"session")?,
            flow: sub(b"flow")?,
            derive: sub(b"derive")?,
            seal: SealKey(label(b"seal").into()),
            siv: sub(b"siv")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectUrl {
    /// Absolute, used as is.
    Absolute(String),
    /// A path, resolved against the request's own `:scheme` and `:authority`.
    Path(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailDomains {
    Any,
    /// `example.com`, or `.example.com` for its subdomains (oauth2-proxy's meaning).
    List(Vec<DomainPattern>),
}

/// Endpoints configured by hand when discovery is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticEndpoints {
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub jwks_uri: Url,
}

/// Cookie attributes every cookie of ours is set with. `name` is the default provider's
/// session cookie and the prefix of login cookies.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    pub domains: Vec<DomainPattern>,
    pub path: String,
    /// `cookie_expire`: a session's absolute lifetime from its login (a refresh keeps it).
    pub expire_secs: u64,
    /// `cookie_refresh`: refresh a session's tokens once they are this old (0: never).
    pub refresh_secs: u64,
    /// `session_idle_timeout`: a session unused for this long is refused (0: never).
    pub idle_secs: u64,
    pub secure: bool,
    pub httponly: bool,
    pub samesite: SameSite,
}

#[derive(Debug, Clone)]
pub struct IdpConfig {
    pub cluster: String,
    /// `host[:port]` of the issuer URL; callouts to it use `authority`.
    pub issuer_host: String,
    pub authority: String,
    pub timeout_ms: u64,
    /// Other hosts (`host[:port]`) and the clusters that reach them.
    pub clusters: Vec<(String, String)>,
}

/// One OpenID provider and our client at it.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// `default` for the flat top-level keys, else its key under `providers`.
    pub name: String,
    /// The issuer identifier exactly as configured; ID tokens' `iss` must equal it.
    pub issuer: String,
    /// What this provider's cookies' MACs are bound to besides the key: `issuer \n client_id`.
    /// A session or login of one provider is therefore never one of another.
    pub cookie_binding: String,
    pub discovery_url: Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: String,
    /// The session cookie of this provider's logins.
    pub cookie_name: String,
    pub idp: IdpConfig,
    pub token_auth: TokenAuthMethod,
    pub static_endpoints: Option<StaticEndpoints>,
    pub jwks_refresh_secs: u64,
    /// `oidc_groups_claim`: where the ID token holds the groups (a claim path).
    pub groups_claim: String,
    /// What this provider's sessions carry for the policies and headers that use them.
    pub carry: Carry,
}

impl ProviderConfig {
    /// The scope a cookie of this provider's named `name` is signed in.
    pub fn scope<'a>(&'a self, name: &'a str) -> crate::session::Scope<'a> {
        crate::session::Scope {
            name,
            binding: &self.cookie_binding,
        }
    }

    /// The cluster and `:authority` for a callout to `url`: the issuer's host goes through
    /// `idp_cluster` with `idp_authority`; other hosts need an `idp_clusters` entry.
    pub fn route_for(&self, url: &Url) -> Option<(String, String)> {
        let auth = url_authority(url).to_ascii_lowercase();
        if auth == self.idp.issuer_host.to_ascii_lowercase() {
            return Some((self.idp.cluster.clone(), self.idp.authority.clone()));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        self.idp
            .clusters
            .iter()
            .find(|(h, _)| *h == auth || *h == host)
            .map(|(_, c)| (c.clone(), auth.clone()))
    }
}

/// Who may sign bearer tokens a host accepts (`skip_jwt_bearer_tokens`): an
/// `extra_jwt_issuers` entry. A host's own provider is one too, with its `client_id` as the
/// audience (oauth2-proxy's behaviour), built from the provider itself.
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    /// Its metadata and keys are fetched as a provider's are; it has no client.
    pub source: ProviderConfig,
    /// `aud` must hold one of these.
    pub audiences: Vec<String>,
    /// The `alg`s accepted (a subset of `oidc::ACCEPTED_ALGS`).
    pub algorithms: Vec<String>,
    /// RFC 9068 §4: the `typ` header every token must have (`at+jwt`), if set.
    pub typ: Option<String>,
    /// Where its metadata and keys are kept: a provider's index when it is that provider's
    /// issuer (with other audiences: access tokens for an API), else its own fetch index
    /// after the providers'.
    pub fetch: usize,
}

/// Who may pass, checked at login and again on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub email_domains: EmailDomains,
    pub allow_unverified_email: bool,
    /// Exact addresses (compared case-insensitively) that pass besides `email_domains`.
    pub allowed_emails: Vec<String>,
    /// At least one of these groups (empty: no group rule).
    pub allowed_groups: Vec<String>,
    /// Every rule must hold.
    pub claim_rules: Vec<ClaimRule>,
    /// `skip_auth_routes` and `skip_auth_regex`: these pass without a session.
    pub skip_routes: Vec<SkipRoute>,
    /// `routes`: per-path rules, the first match decides (before `skip_routes`).
    pub routes: Vec<RouteRule<Policy>>,
    /// `skip_jwt_bearer_tokens`: a request with `Authorization: Bearer <JWT>` is let in on the
    /// token (validated against the host's provider and `extra_jwt_issuers`) instead of a
    /// session.
    pub bearer: bool,
}

/// What a host gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Site {
    /// Login through `providers[provider]`, then `policy`.
    Protect { provider: usize, policy: Policy },
    /// `"auth": false`: requests pass untouched (identity headers a client sent are dropped).
    Pass,
    /// No `hosts` entry matched and `unmatched_hosts` is `deny`.
    Deny,
}

/// One `hosts` entry: host patterns (exact, `*.example.com`) and what they get.
#[derive(Debug, Clone)]
pub struct HostRule {
    pub patterns: Vec<DomainPattern>,
    pub site: Site,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `proxy_prefix`: our own endpoints live under it.
    pub prefix: String,
    pub redirect_url: RedirectUrl,
    pub callback_path: String,
    pub sign_out_path: String,
    pub start_path: String,
    pub auth_path: String,
    /// `{prefix}/userinfo`: the session's identity as JSON.
    pub userinfo_path: String,
    /// `ping_path` / `ready_path` (`None`: off): liveness, and readiness (every provider's
    /// metadata and keys loaded).
    pub ping_path: Option<String>,
    pub ready_path: Option<String>,
    pub cookie: CookieConfig,
    /// First signs, all verify.
    pub keys: Vec<KeySet>,
    pub whitelist_domains: Vec<DomainPattern>,
    pub set_xauthrequest: bool,
    pub pass_user_headers: bool,
    pub skip_auth_preflight: bool,
    /// The flat top-level provider keys make `default`, first; `providers` adds named ones.
    pub providers: Vec<ProviderConfig>,
    /// In order; the first entry with a matching pattern decides. Empty: every host gets
    /// `default_site`.
    pub hosts: Vec<HostRule>,
    /// For a host no entry matches (`Protect` with the first provider when `hosts` is empty).
    pub default_site: Site,
    /// The top-level policy; `hosts` entries start from it.
    pub default_policy: Policy,
    /// Carry every group and send it upstream (`X-Forwarded-Groups`, `X-Auth-Request-Groups`).
    pub pass_groups: bool,
    /// `claim_headers`: (header, lower case; claim path) set upstream from the session.
    pub claim_headers: Vec<(String, String)>,
    /// `pass_access_token`: `X-Forwarded-Access-Token` upstream (and
    /// `X-Auth-Request-Access-Token` in `/oauth2/auth` replies with `set_xauthrequest`).
    pub pass_access_token: bool,
    /// `pass_authorization_header`: `Authorization: Bearer <ID token>` upstream.
    pub pass_authorization_header: bool,
    /// `set_authorization_header`: the same in `/oauth2/auth` replies.
    pub set_authorization_header: bool,
    /// `end_session`: sign-out also ends the provider's session (RP-Initiated Logout 1.0)
    /// when its metadata has an `end_session_endpoint`.
    pub end_session: bool,
    /// Which tokens sessions keep (empty: none, and the cookie stays format 2).
    pub keep: Keep,
    /// `extra_jwt_issuers` (see `JwtIssuer::fetch` for where their keys are kept).
    pub jwt_issuers: Vec<JwtIssuer>,
}

impl Config {
    /// What the request's host (lower case, no port) gets.
    pub fn site_for(&self, host: &str) -> &Site {
        self.hosts
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches(host)))
            .map_or(&self.default_site, |r| &r.site)
    }

    /// Whether a client's header `name` must go: an identity header of ours in any spelling
    /// (case, `_` for `-`), a `claim_headers` one included.
    pub fn is_identity_header(&self, name: &str) -> bool {
        crate::http::is_identity_header(name)
            || self
                .claim_headers
                .iter()
                .any(|(h, _)| crate::http::same_header_spelling(h, name))
    }

    /// The policies sessions of provider `index` are checked against.
    fn policies_of(&self, index: usize) -> impl Iterator<Item = &Policy> {
        self.hosts
            .iter()
            .map(|h| &h.site)
            .chain([&self.default_site])
            .filter_map(move |s| match s {
                Site::Protect { provider, policy } if *provider == index => Some(policy),
                _ => None,
            })
            .chain((index == 0).then_some(&self.default_policy))
            .flat_map(|p| {
                std::iter::once(p).chain(p.routes.iter().filter_map(|r| match &r.action {
                    RouteAction::Allow(q) => Some(&**q),
                    _ => None,
                }))
            })
    }

    /// What provider `index`'s sessions must carry: the groups some `allowed_groups` names
    /// (all of them with `pass_groups`), and the claims of claim rules and `claim_headers`.
    fn carry_of(&self, index: usize) -> Carry {
        let mut named: Vec<String> = Vec::new();
        let mut claims: Vec<String> = Vec::new();
        for p in self.policies_of(index) {
            for g in &p.allowed_groups {
                if !named.contains(g) {
                    named.push(g.clone());
                }
            }
            for r in &p.claim_rules {
                if !claims.contains(&r.claim) {
                    claims.push(r.claim.clone());
                }
            }
        }
        for (_, path) in &self.claim_headers {
            if !claims.contains(path) {
                claims.push(path.clone());
            }
        }
        let needs_groups = self.pass_groups || !named.is_empty();
        Carry {
            groups_claim: self
                .providers
                .get(index)
                .filter(|_| needs_groups)
                .map(|p| p.groups_claim.clone()),
            groups_only: (!self.pass_groups).then_some(named),
            claims,
        }
    }

    /// What the engine fetches metadata and keys for: the providers, then the extra JWT
    /// issuers (fetch index `providers.len() + i`).
    pub fn sources(&self) -> impl Iterator<Item = &ProviderConfig> {
        let n = self.providers.len();
        self.providers.iter().chain(
            self.jwt_issuers
                .iter()
                .filter(move |j| j.fetch >= n)
                .map(|j| &j.source),
        )
    }

    pub fn source(&self, fetch: usize) -> Option<&ProviderConfig> {
        self.sources().nth(fetch)
    }

    /// Whether `name` is a session cookie of one of our providers, or one of its chunks.
    pub fn is_session_cookie(&self, name: &[u8]) -> bool {
        self.providers.iter().any(|p| {
            p.cookie_name.as_bytes() == name
                || crate::session::is_chunk_of(p.cookie_name.as_bytes(), name)
        })
    }
}

/// The tokens a session keeps, from what the config uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub id_token: bool,
    pub access_token: bool,
    pub refresh_token: bool,
    /// The refresh and last-seen marks (`cookie_refresh`, `session_idle_timeout`).
    pub marks: bool,
}

impl Keep {
    /// Whether sessions are format 3 (sealed, with `session::Tokens`).
    pub fn any(self) -> bool {
        self.id_token || self.access_token || self.refresh_token || self.marks
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "oidc-filter: config: {}: {}", self.field, self.message)
    }
}

/// Where a key may appear: at the top level (`Global`, and `Provider` and `Policy` keys there
/// make the default provider and policy), in a `providers` entry, or in a `hosts` entry (with
/// `Policy` keys too). Every key is listed here once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Global,
    Provider,
    Policy,
    Host,
}

const KEYS: &[(&str, Section)] = &[
    ("proxy_prefix", Section::Global),
    ("ping_path", Section::Global),
    ("ready_path", Section::Global),
    ("redirect_url", Section::Global),
    ("cookie_secret", Section::Global),
    ("cookie_secret_env", Section::Global),
    ("cookie_domains", Section::Global),
    ("cookie_path", Section::Global),
    ("cookie_expire", Section::Global),
    ("cookie_refresh", Section::Global),
    ("session_idle_timeout", Section::Global),
    ("cookie_secure", Section::Global),
    ("cookie_httponly", Section::Global),
    ("cookie_samesite", Section::Global),
    ("whitelist_domains", Section::Global),
    ("set_xauthrequest", Section::Global),
    ("pass_user_headers", Section::Global),
    ("skip_auth_preflight", Section::Global),
    ("providers", Section::Global),
    ("hosts", Section::Global),
    ("unmatched_hosts", Section::Global),
    ("oidc_issuer_url", Section::Provider),
    ("client_id", Section::Provider),
    ("client_secret", Section::Provider),
    ("client_secret_env", Section::Provider),
    ("scope", Section::Provider),
    ("cookie_name", Section::Provider),
    ("idp_cluster", Section::Provider),
    ("idp_authority", Section::Provider),
    ("idp_timeout", Section::Provider),
    ("idp_clusters", Section::Provider),
    ("token_endpoint_auth_method", Section::Provider),
    ("skip_oidc_discovery", Section::Provider),
    ("login_url", Section::Provider),
    ("redeem_url", Section::Provider),
    ("oidc_jwks_url", Section::Provider),
    ("jwks_refresh_interval", Section::Provider),
    ("oidc_groups_claim", Section::Provider),
    ("pass_groups", Section::Global),
    ("claim_headers", Section::Global),
    ("extra_jwt_issuers", Section::Global),
    ("pass_access_token", Section::Global),
    ("pass_authorization_header", Section::Global),
    ("set_authorization_header", Section::Global),
    ("end_session", Section::Global),
    ("skip_jwt_bearer_tokens", Section::Policy),
    ("routes", Section::Policy),
    ("email_domains", Section::Policy),
    ("allowed_emails", Section::Policy),
    ("allowed_groups", Section::Policy),
    ("claim_rules", Section::Policy),
    ("skip_auth_routes", Section::Policy),
    ("skip_auth_regex", Section::Policy),
    ("insecure_oidc_allow_unverified_email", Section::Policy),
    ("host", Section::Host),
    ("provider", Section::Host),
    ("auth", Section::Host),
];

/// The top-level keys that say the flat keys define the default provider.
const FLAT_PROVIDER_MARKERS: &[&str] = &[
    "oidc_issuer_url",
    "client_id",
    "client_secret",
    "client_secret_env",
    "idp_cluster",
];

struct Fields<'a> {
    map: &'a Map<String, Value>,
    /// Prepended to every field named in an error (`providers.b.`, `hosts[0].`).
    prefix: String,
    errors: Vec<ConfigError>,
}

// The helpers stay out of line: the config walk calls them from some 200 places, and each
// inlined copy (a map search, an error path) made the module 9 KB larger for a walk that runs
// once per configuration.
impl<'a> Fields<'a> {
    #[inline(never)]
    fn new(map: &'a Map<String, Value>, prefix: String) -> Self {
        Fields {
            map,
            prefix,
            errors: Vec::new(),
        }
    }

    #[inline(never)]
    fn err(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            field: format!("{}{field}", self.prefix),
            message: message.into(),
        });
    }

    /// Names every key that may not appear in this section.
    #[inline(never)]
    fn check_keys(&mut self, allowed: &[Section]) {
        let map = self.map;
        for key in map.keys() {
            let known = KEYS
                .iter()
                .any(|(k, s)| *k == key.as_str() && allowed.contains(s));
            if !known {
                let misplaced = KEYS.iter().any(|(k, _)| *k == key.as_str());
                let what = if misplaced {
                    "is not allowed here"
                } else {
                    "unknown option"
                };
                // An empty or unprintable key is named quoted, so the line still names it.
                if key.is_empty() || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    self.err(&format!("{key:?}"), what);
                } else {
                    self.err(key, what);
                }
            }
        }
    }

    /// The domain patterns under `key` (a string or a list), each checked.
    #[inline(never)]
    fn domains(&mut self, key: &str, dot: LeadingDot, ports: bool) -> Option<Vec<DomainPattern>> {
        let list = self.string_list(key)?;
        let mut out = Vec::with_capacity(list.len());
        for raw in list {
            match DomainPattern::parse(&raw, dot, ports) {
                Ok(p) => out.push(p),
                Err(why) => self.err(key, why),
            }
        }
        Some(out)
    }

    #[inline(never)]
    fn present(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    #[inline(never)]
    fn string(&mut self, key: &str) -> Option<String> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.err(key, "must be a string");
                None
            }
        }
    }

    #[inline(never)]
    fn required_string(&mut self, key: &str) -> Option<String> {
        match self.string(key) {
            Some(s) if !s.trim().is_empty() => Some(s),
            Some(_) => {
                self.err(key, "must not be empty");
                None
            }
            None if self.present(key) => None,
            None => {
                self.err(key, "is required");
                None
            }
        }
    }

    #[inline(never)]
    fn bool_or(&mut self, key: &str, default: bool) -> bool {
        match self.map.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.err(key, "must be true or false");
                default
            }
        }
    }

    /// A string or a list of strings (oauth2-proxy takes both for list options).
    #[inline(never)]
    fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(vec![s.clone()]),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        _ => {
                            self.err(key, "must be a string or a list of strings");
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Some(_) => {
                self.err(key, "must be a string or a list of strings");
                None
            }
        }
    }

    #[inline(never)]
    fn duration_ms(&mut self, key: &str, default: &str, min_ms: u64) -> u64 {
        let raw = self.string(key).unwrap_or_else(|| default.to_string());
        match parse_duration_ms(&raw) {
            Some(ms) if ms >= min_ms => ms,
            Some(_) => {
                self.err(key, format!("must be at least {min_ms}ms"));
                min_ms
            }
            None => {
                self.err(key, "must be a duration such as 90s, 30m, 1h30m or 168h");
                min_ms
            }
        }
    }

    #[inline(never)]
    fn url(&mut self, key: &str, raw: &str) -> Option<Url> {
        match Url::parse(raw) {
            Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host_str().is_some() => {
                if !u.username().is_empty() || u.password().is_some() {
                    self.err(key, "must not contain user information");
                    return None;
                }
                if u.fragment().is_some() {
                    self.err(key, "must not contain a fragment");
                    return None;
                }
                Some(u)
            }
            Ok(_) => {
                self.err(key, "must be an http or https URL with a host");
                None
            }
            Err(e) => {
                self.err(key, format!("is not a valid URL ({e})"));
                None
            }
        }
    }
}

/// `host[:port]` as an authority: the port only when it is not the scheme's default.
pub fn url_authority(u: &Url) -> String {
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains(['?', '#', '\\'])
        && !p.chars().any(|c| c.is_control() || c == ' ')
}

/// Parses the key material of one cookie secret: base64 of 16+ bytes (what
/// `base64.urlsafe_b64encode(os.urandom(16))` prints), or else a raw string of 32+ bytes.
pub fn secret_material(secret: &str) -> Result<Vec<u8>, String> {
    if let Some(why) = looks_like_password(secret) {
        return Err(format!(
            "looks like a password, not random key material ({why}); generate one with \
             python -c 'import os,base64; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
        ));
    }
    if let Some(bytes) = b64_any_decode(secret) {
        if bytes.len() >= MIN_SECRET_BYTES {
            return Ok(bytes);
        }
    }
    if secret.len() >= 2 * MIN_SECRET_BYTES {
        return Ok(secret.as_bytes().to_vec());
    }
    Err(format!(
        "a secret must hold at least {MIN_SECRET_BYTES} bytes of key material: base64 of {MIN_SECRET_BYTES}+ random bytes \
         (e.g. python -c 'import os,base64; print(base64.urlsafe_b64encode(os.urandom(32)).decode())') \
         or a string of {}+ characters",
        2 * MIN_SECRET_BYTES
    ))
}

/// Why `secret` is not the random string it should be, if it looks chosen by a person: any
/// string of base64 letters decodes to "16+ bytes", so the decoded length alone proves nothing.
/// A random base64 string of 22+ characters holds about 18 distinct characters and is neither
/// a repeated pattern nor letters of one case; the bounds below refuse one such string in
/// billions.
pub fn looks_like_password(secret: &str) -> Option<&'static str> {
    let s = secret.trim_end_matches('=');
    let b = s.as_bytes();
    let mut seen = [false; 256];
    for &c in b {
        seen[usize::from(c)] = true;
    }
    let distinct = seen.iter().filter(|x| **x).count();
    if distinct < 10 {
        return Some("too few distinct characters");
    }
    // A repeated pattern ("abc123abc123…").
    if (1..=b.len() / 2).any(|p| b.len().is_multiple_of(p) && b.chunks(p).all(|c| c == &b[..p])) {
        return Some("a repeated pattern");
    }
    // Text in base64 ("ZGVtby1zZWNyZXQ…" is "demo-secret…"): 16 random bytes are all
    // printable ASCII about once in ten million.
    if b64_any_decode(secret)
        .is_some_and(|d| d.len() >= MIN_SECRET_BYTES && d.iter().all(|c| (0x20..0x7f).contains(c)))
    {
        return Some("it is base64 of text");
    }
    let lower = s.to_ascii_lowercase();
    for word in [
        "password", "passw0rd", "secret", "changeme", "letmein", "qwerty",
    ] {
        if lower.contains(word) {
            return Some("contains a common word");
        }
    }
    let letters = b.iter().all(u8::is_ascii_alphabetic);
    if letters && (b.iter().all(u8::is_ascii_lowercase) || b.iter().all(u8::is_ascii_uppercase)) {
        return Some("letters of one case only");
    }
    None
}

impl Config {
    /// Parses and validates a plugin configuration. `env` reads the VM's environment, for the
    /// `*_env` keys. Returns every problem found, one per field.
    #[cfg_attr(oidc_size, optimize(size))]
    pub fn parse(
        json: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        let whole = |message: String| ConfigError {
            field: "(configuration)".into(),
            message,
        };
        let value: Value = match serde_json::from_slice(json) {
            Ok(v) => v,
            Err(e) => {
                return Err(vec![whole(format!(
                    "is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ))])
            }
        };
        let Value::Object(map) = value else {
            return Err(vec![whole("must be a JSON object".into())]);
        };
        let mut f = Fields::new(&map, String::new());
        f.check_keys(&[Section::Global, Section::Provider, Section::Policy]);
        let mut errors = Vec::new();

        // Endpoints under the prefix (oauth2-proxy: --proxy-prefix).
        let prefix = f
            .string("proxy_prefix")
            .unwrap_or_else(|| DEFAULT_PROXY_PREFIX.to_string());
        if !valid_path(&prefix) || prefix.ends_with('/') {
            f.err(
                "proxy_prefix",
                "must be a path starting with / and not ending with /",
            );
        }
        let (redirect_url, callback_path) = redirect_from(&mut f, &prefix);
        // Under the prefix by default (ours: no collision with the upstream's paths); `""`
        // turns one off; another path (oauth2-proxy's `/ping`) takes it from the upstream.
        let mut probe = |key: &str, name: &str| -> Option<String> {
            let p = f.string(key).unwrap_or_else(|| format!("{prefix}/{name}"));
            if p.is_empty() {
                return None;
            }
            if !valid_path(&p) || p.contains('?') {
                f.err(key, "must be a path starting with / (or \"\" for off)");
            }
            Some(p)
        };
        let ping_path = probe("ping_path", "ping");
        let ready_path = probe("ready_path", "ready");
        let cookie = cookie_from(&mut f);
        let keys = keys_from(&mut f, env);
        let whitelist_domains = f
            .domains("whitelist_domains", LeadingDot::WithSubdomains, true)
            .unwrap_or_default();
        let set_xauthrequest = f.bool_or("set_xauthrequest", false);
        let pass_user_headers = f.bool_or("pass_user_headers", true);
        let skip_auth_preflight = f.bool_or("skip_auth_preflight", false);
        let pass_groups = f.bool_or("pass_groups", false);
        let pass_access_token = f.bool_or("pass_access_token", false);
        let pass_authorization_header = f.bool_or("pass_authorization_header", false);
        let set_authorization_header = f.bool_or("set_authorization_header", false);
        let end_session = f.bool_or("end_session", false);
        let keep = Keep {
            id_token: pass_authorization_header || set_authorization_header || end_session,
            access_token: pass_access_token,
            refresh_token: cookie.refresh_secs > 0,
            marks: cookie.idle_secs > 0 || cookie.refresh_secs > 0,
        };
        let claim_headers = claim_headers_from(&mut f);
        let default_policy = policy_from(&mut f, None);

        // Providers: the flat keys are the default one; `providers` names more.
        let mut providers: Vec<ProviderConfig> = Vec::new();
        let flat = FLAT_PROVIDER_MARKERS.iter().any(|k| f.present(k));
        let mut provider_ok = true;
        if flat || !f.present("providers") {
            match provider_from(&mut f, "default", &cookie.name, env) {
                Some(p) => providers.push(p),
                None => provider_ok = false,
            }
        } else {
            for key in KEYS.iter().filter(|(_, s)| *s == Section::Provider) {
                if key.0 != "cookie_name" && f.present(key.0) {
                    f.err(key.0, "belongs in a providers entry (or set the default provider's oidc_issuer_url, client_id, client_secret and idp_cluster here)");
                }
            }
        }
        match map.get("providers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(named)) if !named.is_empty() => {
                for (name, v) in named {
                    let mut p = Fields::new(
                        match v {
                            Value::Object(m) => m,
                            _ => {
                                f.err(&format!("providers.{name}"), "must be an object");
                                provider_ok = false;
                                continue;
                            }
                        },
                        format!("providers.{name}."),
                    );
                    if name == "default" && flat {
                        p.err("", "\"default\" is the provider of the top-level keys");
                    } else if name.is_empty() || !name.chars().all(is_token_char) {
                        p.err("", "a provider name is letters, digits, - and _");
                    }
                    p.check_keys(&[Section::Provider]);
                    match provider_from(&mut p, name, &cookie.name, env) {
                        Some(pc) => providers.push(pc),
                        None => provider_ok = false,
                    }
                    errors.append(&mut p.errors);
                }
            }
            Some(_) => f.err("providers", "must be an object of named providers"),
        }
        if !cookie.domains.is_empty() {
            for (i, a) in providers.iter().enumerate() {
                if let Some(b) = providers[..i]
                    .iter()
                    .find(|b| b.cookie_name == a.cookie_name)
                {
                    f.err(
                        &format!("providers.{}.cookie_name", a.name),
                        format!(
                            "must differ from provider {:?}'s: with cookie_domains set, their sessions would overwrite each other",
                            b.name
                        ),
                    );
                }
            }
        }

        // Every provider name the config declares, accepted or not.
        let mut declared: Vec<&str> = Vec::new();
        if flat || !f.present("providers") {
            declared.push("default");
        }
        if let Some(Value::Object(named)) = map.get("providers") {
            declared.extend(named.keys().map(String::as_str));
        }

        let jwt_issuers = jwt_issuers_from(&mut f, &providers, &mut errors);

        // Hosts: ordered patterns → provider and policy, or no auth at all.
        let mut hosts = Vec::new();
        match map.get("hosts") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, v) in list.iter().enumerate() {
                    let Value::Object(m) = v else {
                        f.err(&format!("hosts[{i}]"), "must be an object");
                        continue;
                    };
                    let mut h = Fields::new(m, format!("hosts[{i}]."));
                    h.check_keys(&[Section::Host, Section::Policy]);
                    if let Some(rule) = host_from(&mut h, &providers, &declared, &default_policy) {
                        hosts.push(rule);
                    }
                    errors.append(&mut h.errors);
                }
            }
            Some(_) => f.err("hosts", "must be a list of host entries"),
        }
        let default_site = match f.string("unmatched_hosts").as_deref() {
            None if hosts.is_empty() && map.get("hosts").is_none_or(Value::is_null) => {
                Site::Protect {
                    provider: 0,
                    policy: default_policy.clone(),
                }
            }
            None | Some("deny") => Site::Deny,
            Some("pass") => Site::Pass,
            Some(_) => {
                f.err("unmatched_hosts", "must be deny or pass");
                Site::Deny
            }
        };
        let bearer_anywhere = default_policy.bearer
            || hosts
                .iter()
                .any(|h| matches!(&h.site, Site::Protect { policy, .. } if policy.bearer));
        if !jwt_issuers.is_empty() && !bearer_anywhere {
            f.err(
                "extra_jwt_issuers",
                "has no effect without skip_jwt_bearer_tokens: true (at the top level or on a host)",
            );
        }
        if matches!(default_site, Site::Protect { .. }) && providers.is_empty() && provider_ok {
            f.err("providers", "must name at least one provider");
        }

        let mut all = f.errors;
        all.append(&mut errors);
        match (all.is_empty(), redirect_url, keys) {
            (true, Some(redirect_url), Some(keys)) => Ok(Config {
                jwt_issuers,
                pass_access_token,
                pass_authorization_header,
                set_authorization_header,
                end_session,
                keep,
                pass_groups,
                claim_headers,
                sign_out_path: format!("{prefix}/sign_out"),
                start_path: format!("{prefix}/start"),
                auth_path: format!("{prefix}/auth"),
                userinfo_path: format!("{prefix}/userinfo"),
                ping_path,
                ready_path,
                prefix,
                redirect_url,
                callback_path,
                cookie,
                keys,
                whitelist_domains,
                set_xauthrequest,
                pass_user_headers,
                skip_auth_preflight,
                providers,
                hosts,
                default_site,
                default_policy,
            }
            .with_carry()),
            _ => Err(if all.is_empty() {
                vec![whole("incomplete".into())]
            } else {
                all
            }),
        }
    }

    fn with_carry(mut self) -> Self {
        for i in 0..self.providers.len() {
            let carry = self.carry_of(i);
            if let Some(p) = self.providers.get_mut(i) {
                p.carry = carry;
            }
        }
        self
    }

    /// The default provider (the first): what a config without `providers` has.
    pub fn provider(&self) -> Option<&ProviderConfig> {
        self.providers.first()
    }
}

fn redirect_from(f: &mut Fields, prefix: &str) -> (Option<RedirectUrl>, String) {
    let redirect_raw = f
        .string("redirect_url")
        .unwrap_or_else(|| format!("{prefix}/callback"));
    if redirect_raw.starts_with('/') {
        if valid_path(&redirect_raw) && !redirect_raw.starts_with("//") {
            (Some(RedirectUrl::Path(redirect_raw.clone())), redirect_raw)
        } else {
            f.err(
                "redirect_url",
                "must be an absolute http(s) URL or a path such as /oauth2/callback",
            );
            (None, String::new())
        }
    } else {
        match f.url("redirect_url", &redirect_raw) {
            Some(u) if u.query().is_none() => (
                Some(RedirectUrl::Absolute(u.as_str().to_string())),
                u.path().to_string(),
            ),
            Some(_) => {
                f.err("redirect_url", "must not contain a query");
                (None, String::new())
            }
            None => (None, String::new()),
        }
    }
}

fn cookie_name_from(f: &mut Fields, default: &str) -> String {
    let name = f
        .string("cookie_name")
        .unwrap_or_else(|| default.to_string());
    if name.is_empty() || !name.chars().all(is_token_char) {
        f.err(
            "cookie_name",
            "must be a non-empty cookie name (letters, digits, and !#$%&'*+-.^_`|~)",
        );
    }
    name
}

fn cookie_from(f: &mut Fields) -> CookieConfig {
    let name = cookie_name_from(f, DEFAULT_COOKIE_NAME);
    let domains = f
        .domains("cookie_domains", LeadingDot::WithSubdomains, false)
        .unwrap_or_default();
    if domains.iter().any(|d| d.reach == Reach::Subdomains) {
        f.err(
            "cookie_domains",
            "a cookie domain is example.com or .example.com (a cookie cannot be for subdomains only)",
        );
    }
    let path = f.string("cookie_path").unwrap_or_else(|| "/".to_string());
    if !valid_path(&path) || path.contains(';') {
        f.err("cookie_path", "must be a path starting with /");
    }
    let expire_ms = f.duration_ms("cookie_expire", DEFAULT_COOKIE_EXPIRE, 60_000);
    let refresh_ms = f.duration_ms("cookie_refresh", "0", 0);
    if refresh_ms != 0 && refresh_ms < 1000 {
        f.err("cookie_refresh", "must be 0 (off) or at least 1s");
    }
    if refresh_ms >= expire_ms {
        f.err(
            "cookie_refresh",
            "must be shorter than cookie_expire (a session cannot outlive cookie_expire)",
        );
    }
    let idle_ms = f.duration_ms("session_idle_timeout", "0", 0);
    if idle_ms != 0 && idle_ms < 1000 {
        f.err("session_idle_timeout", "must be 0 (off) or at least 1s");
    }
    let secure = f.bool_or("cookie_secure", true);
    let httponly = f.bool_or("cookie_httponly", true);
    let samesite = match f
        .string("cookie_samesite")
        .unwrap_or_else(|| "lax".to_string())
        .to_ascii_lowercase()
        .as_str()
    {
        "lax" | "" => SameSite::Lax,
        "strict" => SameSite::Strict,
        "none" => {
            if !secure {
                f.err(
                    "cookie_samesite",
                    "\"none\" needs cookie_secure: true (browsers drop SameSite=None cookies without Secure)",
                );
            }
            SameSite::None
        }
        _ => {
            f.err("cookie_samesite", "must be one of lax, strict, none");
            SameSite::Lax
        }
    };
    // Cookie prefixes (RFC 6265bis §4.1.3): browsers drop such cookies unless these hold.
    if name.starts_with("__Secure-") && !secure {
        f.err(
            "cookie_secure",
            "must be true for a cookie name starting with __Secure-",
        );
    }
    if name.starts_with("__Host-") {
        if !secure {
            f.err(
                "cookie_secure",
                "must be true for a cookie name starting with __Host-",
            );
        }
        if !domains.is_empty() {
            f.err(
                "cookie_domains",
                "must be empty for a cookie name starting with __Host-",
            );
        }
        if path != "/" {
            f.err(
                "cookie_path",
                "must be / for a cookie name starting with __Host-",
            );
        }
    }
    CookieConfig {
        name,
        domains,
        path,
        expire_secs: expire_ms / 1000,
        refresh_secs: refresh_ms / 1000,
        idle_secs: idle_ms / 1000,
        secure,
        httponly,
        samesite,
    }
}

fn keys_from(f: &mut Fields, env: &dyn Fn(&str) -> Option<String>) -> Option<Vec<KeySet>> {
    let list = secret_from(f, "cookie_secret", "cookie_secret_env", env)?;
    if list.is_empty() {
        f.err("cookie_secret", "must hold at least one secret");
        return None;
    }
    let field = if f.present("cookie_secret") {
        "cookie_secret"
    } else {
        "cookie_secret_env"
    };
    let mut keys = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match secret_material(s.trim()) {
            Ok(m) => match KeySet::from_material(&m) {
                Some(k) => keys.push(k),
                None => f.err(field, "could not derive keys"),
            },
            Err(msg) => f.err(field, format!("secret #{}: {msg}", i + 1)),
        }
    }
    Some(keys)
}

/// A policy: the keys present in this section, the rest from `parent` (the top level's).
#[cfg_attr(oidc_size, optimize(size))]
fn policy_from(f: &mut Fields, parent: Option<&Policy>) -> Policy {
    let email_domains = match f.string_list("email_domains") {
        None => parent.map_or(EmailDomains::Any, |p| p.email_domains.clone()),
        Some(list) if list.iter().any(|d| d.trim() == "*") => EmailDomains::Any,
        Some(list) if list.is_empty() => {
            f.err(
                "email_domains",
                "must list at least one domain, or \"*\" for any",
            );
            EmailDomains::Any
        }
        Some(_) => EmailDomains::List(
            f.domains("email_domains", LeadingDot::Subdomains, false)
                .unwrap_or_default(),
        ),
    };
    let allow_unverified_email = f.bool_or(
        "insecure_oidc_allow_unverified_email",
        parent.is_some_and(|p| p.allow_unverified_email),
    );
    let allowed_emails = match f.string_list("allowed_emails") {
        None => parent.map_or_else(Vec::new, |p| p.allowed_emails.clone()),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for e in list {
                let e = e.trim().to_ascii_lowercase();
                let mut parts = e.split('@');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(l), Some(d), None) if !l.is_empty() && !d.is_empty() => out.push(e),
                    _ => f.err("allowed_emails", format!("{e:?} is not an email address")),
                }
            }
            out
        }
    };
    let allowed_groups = match f.string_list("allowed_groups") {
        None => parent.map_or_else(Vec::new, |p| p.allowed_groups.clone()),
        // A host or route that lifts its parent's group rule.
        Some(list) if list.is_empty() && parent.is_some() => Vec::new(),
        Some(list) if list.is_empty() || list.iter().any(|g| g.is_empty()) => {
            f.err(
                "allowed_groups",
                "must list group names (leave it out to allow any group)",
            );
            Vec::new()
        }
        Some(list) => list,
    };
    let claim_rules = if f.present("claim_rules") {
        claim_rules_from(f)
    } else {
        parent.map_or_else(Vec::new, |p| p.claim_rules.clone())
    };
    let skip_routes = if f.present("skip_auth_routes") || f.present("skip_auth_regex") {
        let mut routes = Vec::new();
        for (key, with_method) in [("skip_auth_routes", true), ("skip_auth_regex", false)] {
            for raw in f.string_list(key).unwrap_or_default() {
                match parse_skip_route(&raw, with_method) {
                    Ok(r) => routes.push(r),
                    Err(e) => f.err(key, e),
                }
            }
        }
        routes
    } else {
        parent.map_or_else(Vec::new, |p| p.skip_routes.clone())
    };
    let bearer = f.bool_or("skip_jwt_bearer_tokens", parent.is_some_and(|p| p.bearer));
    let mut policy = Policy {
        email_domains,
        allow_unverified_email,
        allowed_emails,
        allowed_groups,
        claim_rules,
        skip_routes,
        bearer,
        routes: Vec::new(),
    };
    policy.routes = if f.present("routes") {
        routes_from(f, &policy)
    } else {
        parent.map_or_else(Vec::new, |p| p.routes.clone())
    };
    policy
}

/// The keys of a `routes` entry besides the policy keys an `allow` entry may set.
const ROUTE_KEYS: &[&str] = &["path", "regex", "methods", "action", "ignore_case"];
/// Policy keys that make no sense inside a route.
const NOT_IN_ROUTES: &[&str] = &["routes", "skip_auth_routes", "skip_auth_regex"];

/// `routes`: `[{"path": "/admin/" | "regex": "^...", "methods": [...], "action": "allow" |
/// "skip" | "deny", "ignore_case": bool, <policy keys for allow>}]`.
fn routes_from(f: &mut Fields, base: &Policy) -> Vec<RouteRule<Policy>> {
    let Some(Value::Array(list)) = f.map.get("routes") else {
        f.err("routes", "must be a list of route entries");
        return Vec::new();
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let Value::Object(m) = v else {
            f.err(&format!("routes[{i}]"), "must be an object");
            continue;
        };
        let mut r = Fields::new(m, format!("{}routes[{i}].", f.prefix));
        let policy_keys: Vec<&str> = m
            .keys()
            .map(String::as_str)
            .filter(|k| !ROUTE_KEYS.contains(k))
            .collect();
        for k in &policy_keys {
            let is_policy = KEYS
                .iter()
                .any(|(name, s)| name == k && *s == Section::Policy);
            if !is_policy || NOT_IN_ROUTES.contains(k) {
                r.err(
                    k,
                    format!(
                        "unknown option in a route ({}, or a policy key for an allow route)",
                        ROUTE_KEYS.join(", ")
                    ),
                );
            }
        }
        let ignore_case = r.bool_or("ignore_case", false);
        let path = match (r.string("path"), r.string("regex")) {
            (Some(p), None) => {
                if valid_path(&p)
                    && !p.contains(['%', ';'])
                    && crate::routes::normalise_path(&p).as_deref() == Some(p.as_str())
                {
                    Some((PathMatch::Prefix(p.clone()), p))
                } else {
                    r.err("path", "must be a normalised path prefix such as /admin or /api/ (no //, ., .., %, ;)");
                    None
                }
            }
            (None, Some(re)) => {
                if !re.starts_with('^') {
                    r.err(
                        "regex",
                        "must start with ^ (unanchored, it matches anywhere in the path)",
                    );
                    None
                } else {
                    match regex_lite::RegexBuilder::new(&re)
                        .case_insensitive(ignore_case)
                        .build()
                    {
                        Ok(x) => Some((PathMatch::Regex(x), re)),
                        Err(e) => {
                            r.err("regex", format!("{e}"));
                            None
                        }
                    }
                }
            }
            _ => {
                r.err("path", "exactly one of path and regex is required");
                None
            }
        };
        let methods: Vec<String> = r
            .string_list("methods")
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        if methods
            .iter()
            .any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            r.err("methods", "must list HTTP methods such as GET, POST");
        }
        let action = match r.string("action").as_deref() {
            None | Some("allow") => Some(RouteAction::Allow(Box::new(policy_from(
                &mut r,
                Some(base),
            )))),
            Some(a @ ("skip" | "deny")) => {
                for k in &policy_keys {
                    r.err(k, format!("has no effect with \"action\": \"{a}\""));
                }
                Some(if a == "skip" {
                    RouteAction::Skip
                } else {
                    RouteAction::Deny
                })
            }
            Some(_) => {
                r.err("action", "must be allow, skip or deny");
                None
            }
        };
        let ok = r.errors.is_empty();
        f.errors.append(&mut r.errors);
        if let (true, Some((path, source)), Some(action)) = (ok, path, action) {
            out.push(RouteRule {
                methods,
                path,
                ignore_case,
                action,
                source,
            });
        }
    }
    out
}

/// A claim name, or a dotted path into nested claims (`realm_access.roles`).
fn valid_claim_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 256
        && !p.starts_with('.')
        && !p.ends_with('.')
        && !p.contains("..")
        && !p.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// `claim_rules`: `[{"claim": PATH, "equals" | "contains": [VALUES]}]`.
fn claim_rules_from(f: &mut Fields) -> Vec<ClaimRule> {
    let Some(Value::Array(list)) = f.map.get("claim_rules") else {
        f.err(
            "claim_rules",
            "must be a list of {\"claim\": ..., \"equals\" or \"contains\": [...]}",
        );
        return Vec::new();
    };
    let mut rules = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let Value::Object(m) = v else {
            f.err(&format!("claim_rules[{i}]"), "must be an object");
            continue;
        };
        let mut r = Fields::new(m, format!("{}claim_rules[{i}].", f.prefix));
        for k in m.keys() {
            if !matches!(k.as_str(), "claim" | "equals" | "contains") {
                r.err(k, "unknown option (claim, equals, contains)");
            }
        }
        let claim = r.required_string("claim");
        if claim.as_deref().is_some_and(|c| !valid_claim_path(c)) {
            r.err("claim", "must be a claim name or a dotted path");
        }
        let op = match (r.present("equals"), r.present("contains")) {
            (true, false) => Some((RuleOp::Equals, "equals")),
            (false, true) => Some((RuleOp::Contains, "contains")),
            _ => {
                r.err("equals", "exactly one of equals and contains is required");
                None
            }
        };
        let values = op.and_then(|(_, key)| match r.string_list(key) {
            Some(v) if !v.is_empty() && v.iter().all(|s| !s.is_empty()) => Some(v),
            Some(_) => {
                r.err(key, "must list at least one non-empty value");
                None
            }
            None => None,
        });
        let ok = r.errors.is_empty();
        f.errors.append(&mut r.errors);
        if let (true, Some(claim), Some((op, _)), Some(values)) = (ok, claim, op, values) {
            rules.push(ClaimRule { claim, op, values });
        }
    }
    rules
}

/// `claim_headers`: `{"X-Tenant": "tenant_id"}`: a header upstream from a claim's values.
fn claim_headers_from(f: &mut Fields) -> Vec<(String, String)> {
    let map = match f.map.get("claim_headers") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            f.err("claim_headers", "must be an object of header name to claim");
            return Vec::new();
        }
    };
    const REFUSED: &[&str] = &[
        "cookie",
        "host",
        "authorization",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "x-oidc-filter-reason",
    ];
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (header, claim) in map {
        let field = format!("claim_headers.{header}");
        let h = header.to_ascii_lowercase();
        if h.is_empty() || !h.chars().all(is_token_char) || REFUSED.contains(&h.as_str()) {
            errs.push((field, "must be a header name we may set (not Cookie, Host, Authorization or a hop-by-hop header)".to_string()));
            continue;
        }
        if crate::http::is_identity_header(&h) {
            errs.push((
                field,
                "is one of the identity headers the filter sets".to_string(),
            ));
            continue;
        }
        match claim.as_str() {
            Some(c) if valid_claim_path(c) => out.push((h, c.to_string())),
            _ => errs.push((
                field,
                "must name a claim (a name or a dotted path)".to_string(),
            )),
        }
    }
    for (field, msg) in errs {
        f.err(&field, msg);
    }
    out
}

fn host_from(
    f: &mut Fields,
    providers: &[ProviderConfig],
    declared: &[&str],
    default_policy: &Policy,
) -> Option<HostRule> {
    let patterns = match f.domains("host", LeadingDot::Refused, false) {
        Some(p) if !p.is_empty() => p,
        Some(_) => {
            f.err("host", "must list at least one host");
            return None;
        }
        None => {
            if !f.present("host") {
                f.err(
                    "host",
                    "is required (a host such as app.example.com or *.example.com)",
                );
            }
            return None;
        }
    };
    if !f.bool_or("auth", true) {
        for key in [
            "provider",
            "email_domains",
            "insecure_oidc_allow_unverified_email",
        ] {
            if f.present(key) {
                f.err(key, "has no effect with \"auth\": false");
            }
        }
        return Some(HostRule {
            patterns,
            site: Site::Pass,
        });
    }
    // A provider whose own entry was refused is known by name (its errors are reported
    // there); only a name no entry declares is an error here.
    let provider = match f.string("provider") {
        Some(name) => match providers.iter().position(|p| p.name == name) {
            Some(i) => Some(i),
            None => {
                if !declared.iter().any(|d| *d == name) {
                    f.err("provider", format!("{name:?} is not a configured provider"));
                }
                None
            }
        },
        None if declared.len() == 1 => providers.first().map(|_| 0),
        None => {
            if !f.present("provider") {
                f.err(
                    "provider",
                    "is required when several providers are configured",
                );
            }
            None
        }
    };
    let policy = policy_from(f, Some(default_policy));
    Some(HostRule {
        patterns,
        site: Site::Protect {
            provider: provider?,
            policy,
        },
    })
}

/// One provider's keys, from the top level (`default`) or a `providers` entry.
#[cfg_attr(oidc_size, optimize(size))]
fn provider_from(
    f: &mut Fields,
    name: &str,
    default_cookie: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ProviderConfig> {
    // Issuer and discovery (OpenID Connect Discovery 1.0 §4).
    let issuer = f.required_string("oidc_issuer_url");
    let issuer_url = issuer.as_deref().and_then(|i| f.url("oidc_issuer_url", i));
    if let Some(u) = &issuer_url {
        if u.query().is_some() || u.fragment().is_some() {
            f.err("oidc_issuer_url", "must not contain a query or fragment");
        } else if let Some(i) = issuer.as_deref() {
            // ID tokens' `iss` is compared exactly, and discovery is fetched from the
            // parsed URL: the two must be the same string, so take only a canonical one.
            let canonical = u.as_str();
            if canonical != i && canonical.strip_suffix('/') != Some(i) {
                f.err(
                    "oidc_issuer_url",
                    format!(
                        "must be written as {:?} (ID tokens' iss is compared exactly)",
                        canonical.trim_end_matches('/')
                    ),
                );
            }
        }
    }
    let discovery_url = issuer.as_deref().and_then(|i| {
        let base = i.trim_end_matches('/');
        Url::parse(&format!("{base}/.well-known/openid-configuration")).ok()
    });
    let client_id = f.required_string("client_id");
    let client_secret = match client_secret_from(f, env) {
        Some(s) if !s.is_empty() => Some(Secret::new(s)),
        Some(_) => {
            f.err("client_secret", "must not be empty");
            None
        }
        None => None,
    };
    let scope = f
        .string("scope")
        .unwrap_or_else(|| DEFAULT_SCOPE.to_string());
    if !scope.split(' ').any(|s| s == "openid") {
        f.err("scope", "must include openid");
    }
    if scope
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        f.err("scope", "contains characters not allowed in a scope");
    }
    let cookie_name = if f.prefix.is_empty() {
        default_cookie.to_string()
    } else {
        cookie_name_from(f, default_cookie)
    };

    // The identity provider, as the proxy reaches it.
    let idp = idp_from(f, issuer_url.as_ref());
    let token_auth = match f.string("token_endpoint_auth_method").as_deref() {
        None | Some("client_secret_basic") => TokenAuthMethod::ClientSecretBasic,
        Some("client_secret_post") => TokenAuthMethod::ClientSecretPost,
        Some(_) => {
            f.err(
                "token_endpoint_auth_method",
                "must be client_secret_basic or client_secret_post",
            );
            TokenAuthMethod::ClientSecretBasic
        }
    };
    let skip_discovery = f.bool_or("skip_oidc_discovery", false);
    let static_endpoints = if skip_discovery {
        let get =
            |f: &mut Fields, key: &str| f.required_string(key).and_then(|raw| f.url(key, &raw));
        let a = get(f, "login_url");
        let t = get(f, "redeem_url");
        let j = get(f, "oidc_jwks_url");
        match (a, t, j) {
            (Some(a), Some(t), Some(j)) => Some(StaticEndpoints {
                authorization_endpoint: a,
                token_endpoint: t,
                jwks_uri: j,
            }),
            _ => None,
        }
    } else {
        for key in ["login_url", "redeem_url", "oidc_jwks_url"] {
            if f.present(key) {
                f.err(key, "is only used with skip_oidc_discovery: true");
            }
        }
        None
    };
    let jwks_refresh_ms = f.duration_ms("jwks_refresh_interval", DEFAULT_JWKS_REFRESH, 10_000);
    let groups_claim = f
        .string("oidc_groups_claim")
        .unwrap_or_else(|| "groups".to_string());
    if !valid_claim_path(&groups_claim) {
        f.err("oidc_groups_claim", "must be a claim name or a dotted path");
    }
    if skip_discovery && static_endpoints.is_none() {
        return None;
    }
    Some(ProviderConfig {
        name: name.to_string(),
        cookie_binding: format!("{}\n{}", issuer.as_deref()?, client_id.as_deref()?),
        issuer: issuer?,
        discovery_url: discovery_url?,
        client_id: client_id?,
        client_secret: client_secret?,
        scope,
        cookie_name,
        idp: idp?,
        token_auth,
        static_endpoints,
        jwks_refresh_secs: jwks_refresh_ms / 1000,
        groups_claim,
        carry: Carry::default(),
    })
}

/// How the proxy reaches a provider or issuer: `idp_cluster` (required), `idp_authority`,
/// `idp_timeout`, `idp_clusters`.
fn idp_from(f: &mut Fields, issuer_url: Option<&Url>) -> Option<IdpConfig> {
    let cluster = f.required_string("idp_cluster");
    let issuer_host = issuer_url.map(url_authority).unwrap_or_default();
    let authority = f
        .string("idp_authority")
        .unwrap_or_else(|| issuer_host.clone());
    if authority.is_empty() && issuer_url.is_some() {
        f.err("idp_authority", "must not be empty");
    }
    let timeout_ms = f.duration_ms("idp_timeout", DEFAULT_IDP_TIMEOUT, 100);
    let mut clusters = Vec::new();
    match f.map.get("idp_clusters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (host, c) in m {
                match c {
                    Value::String(c) if !c.is_empty() && !host.is_empty() => {
                        clusters.push((host.to_ascii_lowercase(), c.clone()))
                    }
                    _ => f.err(
                        "idp_clusters",
                        format!("{host:?} must map to a cluster name"),
                    ),
                }
            }
        }
        Some(_) => f.err(
            "idp_clusters",
            "must be an object mapping host[:port] to a cluster name",
        ),
    }
    Some(IdpConfig {
        cluster: cluster?,
        issuer_host,
        authority,
        timeout_ms,
        clusters,
    })
}

/// `extra_jwt_issuers`: oauth2-proxy's `issuer=audience` strings (reached through the cluster
/// of a provider that routes the issuer's host), or objects with their own cluster, keys URL,
/// algorithms, `typ` and groups claim.
fn jwt_issuers_from(
    f: &mut Fields,
    providers: &[ProviderConfig],
    errors: &mut Vec<ConfigError>,
) -> Vec<JwtIssuer> {
    let list = match f.map.get("extra_jwt_issuers") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(l)) => l,
        Some(_) => {
            f.err(
                "extra_jwt_issuers",
                "must be a list of \"issuer=audience\" strings or issuer objects",
            );
            return Vec::new();
        }
    };
    let mut out: Vec<JwtIssuer> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let field = format!("extra_jwt_issuers[{i}]");
        let issuer = match v {
            Value::String(s) => jwt_issuer_short(f, &field, s, providers),
            Value::Object(m) => {
                let mut g = Fields::new(m, format!("{}{field}.", f.prefix));
                let r = jwt_issuer_object(&mut g, &field);
                errors.append(&mut g.errors);
                r
            }
            _ => {
                f.err(&field, "must be \"issuer=audience\" or an object");
                None
            }
        };
        let Some(mut issuer) = issuer else { continue };
        if out.iter().any(|o| o.source.issuer == issuer.source.issuer) {
            f.err(
                &field,
                format!(
                    "{:?} is listed already: list its audiences in one entry",
                    issuer.source.issuer
                ),
            );
            continue;
        }
        // A provider's own issuer shares the provider's keys; others are fetched on their own.
        let own = out.iter().filter(|o| o.fetch >= providers.len()).count();
        issuer.fetch = providers
            .iter()
            .position(|p| p.issuer == issuer.source.issuer)
            .unwrap_or(providers.len() + own);
        out.push(issuer);
    }
    out
}

/// An issuer URL, checked as `oidc_issuer_url` is: canonical, no query or fragment.
fn issuer_url_checked(f: &mut Fields, key: &str, raw: &str) -> Option<Url> {
    let u = f.url(key, raw)?;
    if u.query().is_some() {
        f.err(key, "must not contain a query");
        return None;
    }
    let canonical = u.as_str();
    if canonical != raw && canonical.strip_suffix('/') != Some(raw) {
        f.err(
            key,
            format!(
                "must be written as {:?} (tokens' iss is compared exactly)",
                canonical.trim_end_matches('/')
            ),
        );
        return None;
    }
    Some(u)
}

fn issuer_source(
    name: String,
    issuer: String,
    url: &Url,
    idp: IdpConfig,
) -> Option<ProviderConfig> {
    let base = issuer.trim_end_matches('/');
    Some(ProviderConfig {
        name,
        cookie_binding: String::new(),
        discovery_url: Url::parse(&format!("{base}/.well-known/openid-configuration")).ok()?,
        issuer,
        client_id: String::new(),
        client_secret: Secret::new(String::new()),
        scope: String::new(),
        cookie_name: String::new(),
        idp,
        token_auth: TokenAuthMethod::ClientSecretBasic,
        static_endpoints: None,
        jwks_refresh_secs: parse_duration_ms(DEFAULT_JWKS_REFRESH).unwrap_or(900_000) / 1000,
        groups_claim: "groups".into(),
        carry: Carry::default(),
    })
    .filter(|_| url.host_str().is_some())
}

fn jwt_issuer_short(
    f: &mut Fields,
    field: &str,
    raw: &str,
    providers: &[ProviderConfig],
) -> Option<JwtIssuer> {
    let Some((issuer, audience)) = raw
        .split_once('=')
        .filter(|(i, a)| !i.is_empty() && !a.is_empty())
    else {
        f.err(field, "must be \"issuer=audience\"");
        return None;
    };
    let url = issuer_url_checked(f, field, issuer)?;
    let Some(via) = providers.iter().find(|p| p.route_for(&url).is_some()) else {
        f.err(
            field,
            format!(
                "no provider's idp_cluster or idp_clusters reaches {:?}: give this issuer as an object with its idp_cluster",
                url_authority(&url)
            ),
        );
        return None;
    };
    Some(JwtIssuer {
        source: issuer_source(
            issuer.to_string(),
            issuer.to_string(),
            &url,
            via.idp.clone(),
        )?,
        audiences: vec![audience.to_string()],
        algorithms: crate::oidc::ACCEPTED_ALGS
            .iter()
            .map(|a| a.to_string())
            .collect(),
        typ: None,
        fetch: 0,
    })
}

fn jwt_issuer_object(f: &mut Fields, _field: &str) -> Option<JwtIssuer> {
    const ALLOWED: &[&str] = &[
        "issuer",
        "audiences",
        "algorithms",
        "typ",
        "oidc_groups_claim",
        "oidc_jwks_url",
        "jwks_refresh_interval",
        "idp_cluster",
        "idp_authority",
        "idp_timeout",
        "idp_clusters",
    ];
    let map = f.map;
    for k in map.keys() {
        if !ALLOWED.contains(&k.as_str()) {
            f.err(k, format!("unknown option ({})", ALLOWED.join(", ")));
        }
    }
    let issuer = f.required_string("issuer");
    let url = issuer
        .as_deref()
        .and_then(|i| issuer_url_checked(f, "issuer", i));
    let audiences = match f.string_list("audiences") {
        Some(a) if !a.is_empty() && a.iter().all(|x| !x.is_empty()) => Some(a),
        Some(_) => {
            f.err("audiences", "must list at least one audience");
            None
        }
        None => {
            if !f.present("audiences") {
                f.err("audiences", "is required (the aud a token must hold)");
            }
            None
        }
    };
    let algorithms = match f.string_list("algorithms") {
        None => crate::oidc::ACCEPTED_ALGS
            .iter()
            .map(|a| a.to_string())
            .collect(),
        Some(list) => {
            let bad: Vec<&String> = list
                .iter()
                .filter(|a| !crate::oidc::ACCEPTED_ALGS.contains(&a.as_str()))
                .collect();
            if list.is_empty() || !bad.is_empty() {
                f.err(
                    "algorithms",
                    format!(
                        "must list algorithms among {}",
                        crate::oidc::ACCEPTED_ALGS.join(", ")
                    ),
                );
            }
            list
        }
    };
    let typ = f.string("typ");
    if typ
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("at+jwt") && !t.eq_ignore_ascii_case("jwt"))
    {
        f.err("typ", "must be at+jwt (RFC 9068) or JWT");
    }
    let groups_claim = f
        .string("oidc_groups_claim")
        .unwrap_or_else(|| "groups".to_string());
    if !valid_claim_path(&groups_claim) {
        f.err("oidc_groups_claim", "must be a claim name or a dotted path");
    }
    let jwks = f
        .string("oidc_jwks_url")
        .and_then(|raw| f.url("oidc_jwks_url", &raw));
    let refresh_ms = f.duration_ms("jwks_refresh_interval", DEFAULT_JWKS_REFRESH, 10_000);
    let idp = idp_from(f, url.as_ref());
    let (issuer, url) = (issuer?, url?);
    let mut source = issuer_source(issuer.clone(), issuer, &url, idp?)?;
    source.groups_claim = groups_claim;
    source.jwks_refresh_secs = refresh_ms / 1000;
    // Keys at a known URL, no discovery: the other two endpoints are never used for an
    // issuer that only signs tokens; they point at the issuer itself.
    source.static_endpoints = jwks.map(|j| StaticEndpoints {
        authorization_endpoint: url.clone(),
        token_endpoint: url.clone(),
        jwks_uri: j,
    });
    Some(JwtIssuer {
        source,
        audiences: audiences?,
        algorithms,
        typ,
        fetch: 0,
    })
}

/// Where a secret option's value is: inline under `key`, or in the VM environment variable
/// that `env_key` names.
enum SecretText {
    Inline,
    Env(String),
}

/// Which of `key` / `env_key` holds the secret (exactly one must), reading the environment
/// variable if it is that one.
fn secret_source(
    f: &mut Fields,
    key: &str,
    env_key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<SecretText> {
    match (f.present(key), f.present(env_key)) {
        (true, true) => {
            f.err(key, format!("set either {key} or {env_key}, not both"));
            None
        }
        (true, false) => Some(SecretText::Inline),
        (false, true) => {
            let name = f.required_string(env_key)?;
            match env(&name) {
                Some(v) if !v.trim().is_empty() => Some(SecretText::Env(v)),
                _ => {
                    f.err(
                        env_key,
                        format!("the VM environment variable {name:?} is not set or empty"),
                    );
                    None
                }
            }
        }
        (false, false) => {
            f.err(key, format!("is required (or {env_key})"));
            None
        }
    }
}

/// The client secret, inline (a string) or by the name of a VM environment variable, taken
/// whole: a comma or a space in it is part of the secret, never a separator.
fn client_secret_from(f: &mut Fields, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    match secret_source(f, "client_secret", "client_secret_env", env)? {
        SecretText::Env(v) => Some(v),
        SecretText::Inline => match f.map.get("client_secret") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => {
                f.err("client_secret", "must be a string (one secret)");
                None
            }
        },
    }
}

/// Reads a secret option that may be given inline (string or list) or by the name of a VM
/// environment variable (one secret, or a comma-separated list).
fn secret_from(
    f: &mut Fields,
    key: &str,
    env_key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Vec<String>> {
    match secret_source(f, key, env_key, env)? {
        SecretText::Inline => f.string_list(key),
        SecretText::Env(v) => Some(
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SECRET: &str = "BjsqLqI3hVQyzn3bvtp9kg=="; // base64url of 16 bytes

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "oidc_issuer_url": "https://issuer.example.com",
            "client_id": "app",
            "client_secret": "s3cret",
            "cookie_secret": SECRET,
            "idp_cluster": "idp",
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Config, Vec<ConfigError>> {
        Config::parse(v.to_string().as_bytes(), &no_env)
    }

    fn fields(v: &serde_json::Value) -> Vec<String> {
        match parse(v) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn minimal_config_takes_oauth2_proxy_defaults() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.cookie.name, "_oauth2_proxy");
        assert_eq!(c.cookie.expire_secs, 168 * 3600);
        assert!(c.cookie.secure && c.cookie.httponly);
        assert_eq!(c.cookie.samesite, SameSite::Lax);
        let p = &c.providers[0];
        assert_eq!(p.name, "default");
        assert_eq!(p.scope, "openid email profile");
        assert_eq!(p.cookie_name, "_oauth2_proxy");
        assert_eq!(c.callback_path, "/oauth2/callback");
        assert_eq!(c.sign_out_path, "/oauth2/sign_out");
        assert_eq!(c.redirect_url, RedirectUrl::Path("/oauth2/callback".into()));
        assert_eq!(c.default_policy.email_domains, EmailDomains::Any);
        assert!(matches!(c.default_site, Site::Protect { provider: 0, .. }));
        assert_eq!(
            p.discovery_url.as_str(),
            "https://issuer.example.com/.well-known/openid-configuration"
        );
        assert_eq!(p.idp.authority, "issuer.example.com");
        assert_eq!(c.keys.len(), 1);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn every_wrong_field_is_named() {
        let v = serde_json::json!({
            "oidc_issuer_url": "ftp://x",
            "client_id": "",
            "cookie_secret": "short",
            "cookie_expire": "soon",
            "cookie_samesite": "sometimes",
            "idp_timeout": 5,
            "frobnicate": true,
        });
        let mut got = fields(&v);
        got.sort();
        assert_eq!(
            got,
            vec![
                "client_id",
                "client_secret",
                "cookie_expire",
                "cookie_samesite",
                "cookie_secret",
                "frobnicate",
                "idp_cluster",
                "idp_timeout",
                "oidc_issuer_url",
            ]
        );
    }

    #[test]
    fn issuer_must_be_canonical() {
        // What discovery fetches and what `iss` is compared with must be one string.
        for ok in [
            "https://issuer.example.com",
            "https://issuer.example.com/",
            "https://login.example.org/tenant/v2.0",
            "https://issuer.example.com:8443/realms/x",
        ] {
            let mut v = base();
            v["oidc_issuer_url"] = ok.into();
            assert_eq!(fields(&v), Vec::<String>::new(), "{ok}");
        }
        for bad in [
            "https:/issuer.example.com/tenant",
            "HTTPS://issuer.example.com",
            "https://Issuer.example.com",
            "https://issuer.example.com:443/x",
            "https://issuer.example.com/a/../b",
            "https://issuer.example.com/#x",
        ] {
            let mut v = base();
            v["oidc_issuer_url"] = bad.into();
            let e = parse(&v).unwrap_err();
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(e[0].field, "oidc_issuer_url", "{bad}");
        }
    }

    fn two_providers() -> serde_json::Value {
        serde_json::json!({
            "cookie_secret": SECRET,
            "providers": {
                "corp": {"oidc_issuer_url": "https://corp.example", "client_id": "a",
                         "client_secret": "x", "idp_cluster": "corp", "cookie_name": "_corp"},
                "partners": {"oidc_issuer_url": "https://partners.example", "client_id": "b",
                             "client_secret": "y", "idp_cluster": "partners"},
            },
            "hosts": [
                {"host": "grafana.example.com", "provider": "corp",
                 "email_domains": ["example.com"]},
                {"host": ["*.partners.example.com", "partners.example.com"],
                 "provider": "partners"},
                {"host": "status.example.com", "auth": false},
            ],
        })
    }

    #[test]
    fn providers_and_hosts() {
        let c = parse(&two_providers()).unwrap();
        let names: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["corp", "partners"]);
        assert_eq!(c.providers[0].cookie_name, "_corp");
        // A provider without its own cookie_name takes the top level's.
        assert_eq!(c.providers[1].cookie_name, "_oauth2_proxy");
        assert_ne!(c.providers[0].cookie_binding, c.providers[1].cookie_binding);
        let site = |h: &str| c.site_for(h).clone();
        match site("grafana.example.com") {
            Site::Protect {
                provider: 0,
                policy,
            } => assert!(matches!(
                policy.email_domains,
                EmailDomains::List(ref l) if l.len() == 1
            )),
            other => panic!("{other:?}"),
        }
        for h in ["a.partners.example.com", "partners.example.com"] {
            match site(h) {
                Site::Protect {
                    provider: 1,
                    policy,
                } => {
                    assert_eq!(policy.email_domains, EmailDomains::Any)
                }
                other => panic!("{h}: {other:?}"),
            }
        }
        assert!(matches!(site("status.example.com"), Site::Pass));
        // With hosts listed, an unlisted host is denied unless unmatched_hosts says pass.
        assert!(matches!(site("other.example.com"), Site::Deny));
        // `*.` is any depth below, as in Envoy's virtual host domains.
        assert!(matches!(
            site("a.b.partners.example.com"),
            Site::Protect { provider: 1, .. }
        ));
        assert!(matches!(site("xpartners.example.com"), Site::Deny));
        let mut v = two_providers();
        v["unmatched_hosts"] = "pass".into();
        assert!(matches!(
            parse(&v).unwrap().site_for("other.example.com"),
            Site::Pass
        ));
    }

    #[test]
    fn flat_keys_are_the_default_provider_and_hosts_may_use_it() {
        let mut v = base();
        v["hosts"] = serde_json::json!([{"host": "app.example.com"},
                                        {"host": "*.internal.example", "auth": false}]);
        v["unmatched_hosts"] = "pass".into();
        let c = parse(&v).unwrap();
        assert_eq!(c.providers.len(), 1);
        assert!(matches!(
            c.site_for("app.example.com"),
            Site::Protect { provider: 0, .. }
        ));
        assert!(matches!(c.site_for("x.internal.example"), Site::Pass));
        assert!(matches!(c.site_for("else.example"), Site::Pass));
    }

    #[test]
    fn provider_and_host_errors_are_named_with_their_path() {
        let mut v = two_providers();
        v["providers"]["corp"]["client_id"] = "".into();
        v["providers"]["partners"]["frobnicate"] = 1.into();
        v["providers"]["bad name"] = serde_json::json!({});
        v["hosts"] = serde_json::json!([
            {"host": "a.example.com", "provider": "nobody"},
            {"host": "b.example.com"},
            {"provider": "corp"},
            {"host": "c.example.com", "auth": false, "provider": "corp"},
            {"host": "*.d.example.com", "cookie_secret": SECRET},
            {"host": ".e.example.com", "provider": "corp"},
            "f.example.com",
        ]);
        v["unmatched_hosts"] = "maybe".into();
        let errs = parse(&v).unwrap_err();
        let mut got: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        got.sort();
        got.dedup();
        assert_eq!(
            got,
            [
                "hosts[0].provider",
                "hosts[1].provider",
                "hosts[2].host",
                "hosts[3].provider",
                "hosts[4].cookie_secret",
                "hosts[4].provider",
                "hosts[5].host",
                "hosts[6]",
                "providers.bad name.",
                "providers.bad name.client_id",
                "providers.bad name.client_secret",
                "providers.bad name.idp_cluster",
                "providers.bad name.oidc_issuer_url",
                "providers.corp.client_id",
                "providers.partners.frobnicate",
                "unmatched_hosts",
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn provider_keys_at_the_top_need_the_flat_provider() {
        let mut v = two_providers();
        v["scope"] = "openid".into();
        assert_eq!(fields(&v), ["scope"]);
        // Flat keys and a provider named "default" would be two defaults.
        let mut v = base();
        v["providers"] = serde_json::json!({"default": {
            "oidc_issuer_url": "https://x.example", "client_id": "c",
            "client_secret": "s", "idp_cluster": "x"}});
        assert_eq!(fields(&v), ["providers.default."]);
        // Two providers sharing a cookie name across cookie_domains would overwrite each
        // other's sessions.
        let mut v = two_providers();
        v["providers"]["corp"]["cookie_name"] = "_oauth2_proxy".into();
        assert_eq!(fields(&v), Vec::<String>::new());
        v["cookie_domains"] = serde_json::json!([".example.com"]);
        assert_eq!(fields(&v), ["providers.partners.cookie_name"]);
    }

    #[test]
    fn not_json_or_not_object() {
        assert_eq!(
            Config::parse(b"{", &no_env).unwrap_err()[0].field,
            "(configuration)"
        );
        assert_eq!(
            Config::parse(b"[]", &no_env).unwrap_err()[0].field,
            "(configuration)"
        );
    }

    #[test]
    fn seed_style_secret_accepted_short_rejected() {
        // base64.urlsafe_b64encode(os.urandom(16)) → 24 characters.
        assert_eq!(
            secret_material("q83vEjRWeJCrze8SNFZ4kA==").unwrap().len(),
            16
        );
        assert_eq!(secret_material("q83vEjRWeJCrze8SNFZ4kA").unwrap().len(), 16);
        assert!(secret_material("q83vEjRWeJCrze8S").is_err()); // 12 bytes
        assert!(secret_material("correct horse battery").is_err());
        assert!(secret_material("correct horse battery staple, ok!").is_ok());
        let mut v = base();
        v["cookie_secret"] = "abc".into();
        assert_eq!(fields(&v), vec!["cookie_secret"]);
    }

    #[test]
    fn unknown_keys_are_named_even_when_empty() {
        let mut v = base();
        v[""] = 1.into();
        v["a\nb"] = 1.into();
        let errs = parse(&v).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["\"\"", "\"a\\nb\""]);
    }

    #[test]
    fn secret_list_rotation_and_env() {
        let mut v = base();
        v["cookie_secret"] = serde_json::json!([SECRET, "q83vEjRWeJCrze8SNFZ4kA=="]);
        assert_eq!(parse(&v).unwrap().keys.len(), 2);

        let mut v = base();
        v.as_object_mut().unwrap().remove("cookie_secret");
        v.as_object_mut().unwrap().remove("client_secret");
        v["cookie_secret_env"] = "COOKIE".into();
        v["client_secret_env"] = "CLIENT".into();
        let env = |k: &str| match k {
            "COOKIE" => Some(format!("{SECRET}, q83vEjRWeJCrze8SNFZ4kA==")),
            "CLIENT" => Some("from-env".to_string()),
            _ => None,
        };
        let c = Config::parse(v.to_string().as_bytes(), &env).unwrap();
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.providers[0].client_secret.expose(), "from-env");
        let errs = Config::parse(v.to_string().as_bytes(), &no_env).unwrap_err();
        let mut f: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        f.sort();
        assert_eq!(f, vec!["client_secret_env", "cookie_secret_env"]);

        let mut v = base();
        v["cookie_secret_env"] = "COOKIE".into();
        assert_eq!(fields(&v), vec!["cookie_secret"]);
    }

    #[test]
    fn cookie_prefix_rules() {
        let mut v = base();
        v["cookie_name"] = "__Host-session".into();
        v["cookie_secure"] = false.into();
        v["cookie_domains"] = serde_json::json!([".example.com"]);
        let mut f = fields(&v);
        f.sort();
        assert_eq!(f, vec!["cookie_domains", "cookie_secure"]);
        let mut v = base();
        v["cookie_samesite"] = "none".into();
        v["cookie_secure"] = false.into();
        assert_eq!(fields(&v), vec!["cookie_samesite"]);
        let mut v = base();
        v["cookie_name"] = "bad name;".into();
        assert_eq!(fields(&v), vec!["cookie_name"]);
    }

    #[test]
    fn redirect_url_forms() {
        let mut v = base();
        v["redirect_url"] = "https://app.example.com/cb".into();
        let c = parse(&v).unwrap();
        assert_eq!(c.callback_path, "/cb");
        assert_eq!(
            c.redirect_url,
            RedirectUrl::Absolute("https://app.example.com/cb".into())
        );
        for bad in [
            "//evil/cb",
            "cb",
            "javascript:alert(1)",
            "/cb?x=1",
            "https://a/cb?x",
        ] {
            let mut v = base();
            v["redirect_url"] = bad.into();
            assert_eq!(fields(&v), vec!["redirect_url"], "{bad}");
        }
    }

    #[test]
    fn skip_discovery_needs_endpoints() {
        let mut v = base();
        v["skip_oidc_discovery"] = true.into();
        v["login_url"] = "https://issuer.example.com/auth".into();
        let mut f = fields(&v);
        f.sort();
        assert_eq!(f, vec!["oidc_jwks_url", "redeem_url"]);
        v["redeem_url"] = "https://issuer.example.com/token".into();
        v["oidc_jwks_url"] = "https://keys.example.net/jwks".into();
        assert!(parse(&v).unwrap().providers[0].static_endpoints.is_some());
        let mut v = base();
        v["login_url"] = "https://issuer.example.com/auth".into();
        assert_eq!(fields(&v), vec!["login_url"]);
    }

    #[test]
    fn callout_routes() {
        let mut v = base();
        v["idp_authority"] = "issuer.internal".into();
        v["idp_clusters"] = serde_json::json!({"keys.example.net": "keys"});
        let c = parse(&v).unwrap();
        let r = |u: &str| c.providers[0].route_for(&Url::parse(u).unwrap());
        assert_eq!(
            r("https://issuer.example.com/token"),
            Some(("idp".into(), "issuer.internal".into()))
        );
        assert_eq!(
            r("https://keys.example.net/jwks"),
            Some(("keys".into(), "keys.example.net".into()))
        );
        assert_eq!(r("https://other.example.org/x"), None);
        let mut v = base();
        v["idp_clusters"] = serde_json::json!({"keys.example.net": 3});
        assert_eq!(fields(&v), vec!["idp_clusters"]);
    }

    #[test]
    fn email_domains_parse() {
        let mut v = base();
        v["email_domains"] = serde_json::json!(["Example.com", ".corp.example"]);
        let d = |s: &str| DomainPattern::parse(s, LeadingDot::Subdomains, false).unwrap();
        assert_eq!(
            parse(&v).unwrap().default_policy.email_domains,
            EmailDomains::List(vec![d("example.com"), d(".corp.example")])
        );
        v["email_domains"] = serde_json::json!("*");
        assert_eq!(
            parse(&v).unwrap().default_policy.email_domains,
            EmailDomains::Any
        );
        v["email_domains"] = serde_json::json!(["a@b"]);
        assert_eq!(fields(&v), vec!["email_domains"]);
    }
}
