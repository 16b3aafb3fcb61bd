//! The provider's metadata and keys as the root context keeps them: fetched at start,
//! refreshed on a timer, retried with backoff, and refetched on demand (rate limited) when an
//! ID token names a key we do not have. Stale values are kept while a refresh fails.

use url::Url;

use crate::config::Config;
use crate::flow::Callout;
use crate::oidc::{KeySet, Provider};

/// Minimum time between two on-demand JWKS fetches.
pub const FORCED_JWKS_INTERVAL_SECS: u64 = 30;
/// Longest wait between retries after failures.
pub const MAX_BACKOFF_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    Discovery,
    Jwks,
}

#[derive(Debug, Default)]
pub struct IdpState {
    pub provider: Option<Provider>,
    pub keys: Option<KeySet>,
    next_discovery: u64,
    next_jwks: u64,
    in_flight: Option<(FetchKind, u64)>,
    failures: u32,
    last_forced_jwks: Option<u64>,
}

/// A GET to `url` through the proxy, routed by the config's cluster map.
pub fn get_callout(cfg: &Config, url: &Url) -> Option<Callout> {
    let (cluster, authority) = cfg.route_for(url)?;
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    Some(Callout {
        cluster,
        headers: vec![
            (":method".into(), "GET".into()),
            (":path".into(), path),
            (":authority".into(), authority),
            ("accept".into(), "application/json".into()),
        ],
        body: Vec::new(),
        timeout_ms: cfg.idp.timeout_ms,
    })
}

impl IdpState {
    pub fn new(cfg: &Config) -> Self {
        let provider = cfg.static_endpoints.as_ref().map(|e| Provider {
            issuer: cfg.issuer.clone(),
            authorization_endpoint: e.authorization_endpoint.clone(),
            token_endpoint: e.token_endpoint.clone(),
            jwks_uri: e.jwks_uri.clone(),
        });
        IdpState {
            provider,
            ..Default::default()
        }
    }

    pub fn ready(&self) -> bool {
        self.provider.is_some() && self.keys.is_some()
    }

    /// Called on every tick: the fetch to start now, if any. Marks it in flight.
    pub fn poll(&mut self, cfg: &Config, now: u64) -> Option<(FetchKind, Callout, String)> {
        if let Some((_, since)) = self.in_flight {
            // The host answers every callout, on timeout too; this only guards against a lost one.
            if now < since + cfg.idp.timeout_ms / 1000 + 10 {
                return None;
            }
            self.in_flight = None;
        }
        let (kind, url) = if cfg.static_endpoints.is_none() && now >= self.next_discovery {
            (FetchKind::Discovery, cfg.discovery_url.clone())
        } else if let Some(p) = self.provider.as_ref().filter(|_| now >= self.next_jwks) {
            (FetchKind::Jwks, p.jwks_uri.clone())
        } else {
            return None;
        };
        let Some(callout) = get_callout(cfg, &url) else {
            self.fail(now);
            self.next_discovery = self.next_discovery.max(now + MAX_BACKOFF_SECS);
            self.next_jwks = self.next_jwks.max(now + MAX_BACKOFF_SECS);
            return None;
        };
        self.in_flight = Some((kind, now));
        Some((kind, callout, url.to_string()))
    }

    fn backoff(&self) -> u64 {
        (1u64 << self.failures.min(6)).min(MAX_BACKOFF_SECS)
    }

    fn fail(&mut self, _now: u64) {
        self.failures = self.failures.saturating_add(1);
    }

    /// A fetch answered (`status` is `None` when it failed). Returns a log line.
    pub fn on_response(
        &mut self,
        cfg: &Config,
        kind: FetchKind,
        status: Option<u32>,
        body: &[u8],
        now: u64,
    ) -> Result<String, String> {
        if self.in_flight.is_some_and(|(k, _)| k == kind) {
            self.in_flight = None;
        }
        let result = match status {
            None => Err("no response (unreachable or timed out)".to_string()),
            Some(200) => match kind {
                FetchKind::Discovery => Provider::from_discovery(body, &cfg.issuer).map(|p| {
                    let jwks_changed =
                        self.provider.as_ref().map(|o| &o.jwks_uri) != Some(&p.jwks_uri);
                    self.provider = Some(p);
                    if jwks_changed {
                        self.next_jwks = now;
                    }
                    self.next_discovery = now + cfg.jwks_refresh_secs;
                    "discovery document loaded".to_string()
                }),
                FetchKind::Jwks => KeySet::parse(body).and_then(|k| {
                    if k.keys.is_empty() {
                        return Err("JWKS holds no usable signing key".to_string());
                    }
                    let n = k.keys.len();
                    self.keys = Some(k);
                    self.next_jwks = now + cfg.jwks_refresh_secs;
                    Ok(format!("JWKS loaded ({n} keys)"))
                }),
            },
            Some(s) => Err(format!("answered {s}")),
        };
        match result {
            Ok(msg) => {
                self.failures = 0;
                Ok(msg)
            }
            Err(e) => {
                self.fail(now);
                let wait = self.backoff();
                match kind {
                    FetchKind::Discovery => self.next_discovery = now + wait,
                    FetchKind::Jwks => self.next_jwks = now + wait,
                }
                Err(format!("{kind:?} fetch failed: {e}; retry in {wait}s"))
            }
        }
    }

    /// Whether an on-demand JWKS fetch may start now; records it if so.
    pub fn take_forced_jwks(&mut self, now: u64) -> bool {
        match self.last_forced_jwks {
            Some(t) if now < t + FORCED_JWKS_INTERVAL_SECS => false,
            _ => {
                self.last_forced_jwks = Some(now);
                true
            }
        }
    }

    pub fn jwks_callout(&self, cfg: &Config) -> Option<Callout> {
        get_callout(cfg, &self.provider.as_ref()?.jwks_uri)
    }
}
