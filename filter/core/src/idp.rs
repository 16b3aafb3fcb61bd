//! The provider's metadata and keys as the root context keeps them: fetched at start,
//! refreshed on a timer, retried with backoff, and refetched on demand (rate limited) when an
//! ID token names a key we do not have. Stale values are kept while a refresh fails.

use url::Url;

use crate::config::ProviderConfig;
use crate::flow::Callout;
use crate::oidc::{KeySet, Provider};

/// Minimum time between two on-demand JWKS fetches (an ID token named a key we do not have),
/// whatever the kids: the bound on what forged tokens can make us fetch.
pub const FORCED_JWKS_INTERVAL_SECS: u64 = 5;
/// A kid still unknown after a refetch is refused without another one for this long: the
/// bound per kid. Another kid (a real rotation right after a forged token) still refetches.
pub const REFUSED_KID_SECS: u64 = 60;
/// Kids remembered as refused; the oldest goes first.
pub const MAX_REFUSED_KIDS: usize = 32;
/// Longest a login waits for a JWKS refetch before it is answered with the keys it has.
pub const KEY_WAIT_SECS: u64 = 10;
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
    /// A login waits for keys: fetch the JWKS as soon as the interval allows.
    wants_keys: bool,
    refused_kids: Vec<(String, u64)>,
}

/// What to do with a login whose ID token names a key we do not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKid {
    /// Wait for the next JWKS response (one already in flight, or one `poll` starts).
    Wait,
    /// This kid was refetched for moments ago and is still unknown: refuse now.
    Refuse,
}

/// A GET to `url` through the proxy, routed by the config's cluster map.
pub fn get_callout(cfg: &ProviderConfig, url: &Url, endpoint: &'static str) -> Option<Callout> {
    let (cluster, authority) = cfg.route_for(url)?;
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    Some(Callout {
        endpoint,
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
    pub fn new(cfg: &ProviderConfig) -> Self {
        let provider = cfg.static_endpoints.as_ref().map(|e| Provider {
            issuer: cfg.issuer.clone(),
            authorization_endpoint: e.authorization_endpoint.clone(),
            token_endpoint: e.token_endpoint.clone(),
            jwks_uri: e.jwks_uri.clone(),
            end_session_endpoint: None,
        });
        IdpState {
            provider,
            ..Default::default()
        }
    }

    pub fn ready(&self) -> bool {
        self.provider.is_some() && self.keys.is_some()
    }

    /// Called on every tick: the fetch to start now, if any, marked in flight. `Err` says why a
    /// due fetch cannot start (no cluster for its host); it is retried after a backoff.
    pub fn poll(
        &mut self,
        cfg: &ProviderConfig,
        now: u64,
    ) -> Result<Option<(FetchKind, Callout, String)>, String> {
        if let Some((_, since)) = self.in_flight {
            // The host answers every callout, on timeout too; this only guards against a lost one.
            if now < since + cfg.idp.timeout_ms / 1000 + 10 {
                return Ok(None);
            }
            self.in_flight = None;
        }
        let forced = self.wants_keys
            && self
                .last_forced_jwks
                .is_none_or(|t| now >= t + FORCED_JWKS_INTERVAL_SECS);
        let (kind, url) = if cfg.static_endpoints.is_none() && now >= self.next_discovery {
            (FetchKind::Discovery, cfg.discovery_url.clone())
        } else if let Some(p) = self
            .provider
            .as_ref()
            .filter(|_| now >= self.next_jwks || forced)
        {
            if forced {
                self.last_forced_jwks = Some(now);
                self.wants_keys = false;
            }
            (FetchKind::Jwks, p.jwks_uri.clone())
        } else {
            return Ok(None);
        };
        let endpoint = match kind {
            FetchKind::Discovery => "discovery",
            FetchKind::Jwks => "jwks",
        };
        let Some(callout) = get_callout(cfg, &url, endpoint) else {
            self.fail(now);
            match kind {
                FetchKind::Discovery => self.next_discovery = now + MAX_BACKOFF_SECS,
                FetchKind::Jwks => self.next_jwks = now + MAX_BACKOFF_SECS,
            }
            let host = url.host_str().unwrap_or_default();
            return Err(format!(
                "{kind:?} at {url}: no cluster for host {host:?}; add it to idp_clusters; retry in {MAX_BACKOFF_SECS}s"
            ));
        };
        self.in_flight = Some((kind, now));
        Ok(Some((kind, callout, url.to_string())))
    }

    fn backoff(&self) -> u64 {
        (1u64 << self.failures.min(6)).min(MAX_BACKOFF_SECS)
    }

    fn fail(&mut self, _now: u64) {
        self.failures = self.failures.saturating_add(1);
    }

    /// A fetch answered (`status` is `None` when it failed). Returns a log line.
    #[cfg_attr(oidc_size, optimize(size))]
    pub fn on_response(
        &mut self,
        cfg: &ProviderConfig,
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

    /// An ID token names `kid`, which the keys we hold lack. Unless that kid was refetched
    /// for moments ago, the login waits and `poll` fetches the JWKS as soon as
    /// `FORCED_JWKS_INTERVAL_SECS` allows (or a fetch in flight answers first).
    pub fn on_unknown_kid(&mut self, kid: &str, now: u64) -> UnknownKid {
        self.refused_kids.retain(|(_, until)| *until > now);
        if self.refused_kids.iter().any(|(k, _)| k == kid) {
            return UnknownKid::Refuse;
        }
        self.wants_keys = true;
        UnknownKid::Wait
    }

    /// Whether `kid` was refetched for moments ago and is still unknown (read-only).
    pub fn kid_refused(&self, kid: &str, now: u64) -> bool {
        self.refused_kids
            .iter()
            .any(|(k, until)| k == kid && *until > now)
    }

    /// A JWKS response came and `kid` is still not in it: refuse it for `REFUSED_KID_SECS`.
    pub fn still_unknown(&mut self, kid: &str, now: u64) {
        if self.refused_kids.iter().any(|(k, _)| k == kid) {
            return;
        }
        if self.refused_kids.len() >= MAX_REFUSED_KIDS {
            self.refused_kids.remove(0);
        }
        self.refused_kids
            .push((kid.to_string(), now + REFUSED_KID_SECS));
    }

    pub fn jwks_callout(&self, cfg: &ProviderConfig) -> Option<Callout> {
        get_callout(cfg, &self.provider.as_ref()?.jwks_uri, "jwks")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: serde_json::Value) -> ProviderConfig {
        let mut v = serde_json::json!({
            "oidc_issuer_url": "https://issuer.example.com",
            "client_id": "app", "client_secret": "x", "idp_cluster": "idp",
            "cookie_secret": "q83vEjRWeJCrze8SNFZ4kA==",
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        crate::config::Config::parse(v.to_string().as_bytes(), &|_| None)
            .unwrap()
            .providers
            .remove(0)
    }

    fn discovery(jwks: &str) -> Vec<u8> {
        serde_json::json!({
            "issuer": "https://issuer.example.com",
            "authorization_endpoint": "https://issuer.example.com/auth",
            "token_endpoint": "https://issuer.example.com/token",
            "jwks_uri": jwks,
        })
        .to_string()
        .into_bytes()
    }

    const JWKS: &[u8] = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn path(c: &Callout) -> &str {
        c.headers
            .iter()
            .find(|(k, _)| k == ":path")
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn start_refresh_and_backoff() {
        let c = cfg(serde_json::json!({"jwks_refresh_interval": "60s"}));
        let mut s = IdpState::new(&c);
        let (k, call, _) = s.poll(&c, 100).unwrap().unwrap();
        assert_eq!(
            (k, path(&call)),
            (FetchKind::Discovery, "/.well-known/openid-configuration")
        );
        // One fetch at a time.
        assert_eq!(s.poll(&c, 100), Ok(None));
        s.on_response(
            &c,
            k,
            Some(200),
            &discovery("https://issuer.example.com/jwks"),
            100,
        )
        .unwrap();
        let (k, call, _) = s.poll(&c, 100).unwrap().unwrap();
        assert_eq!((k, path(&call)), (FetchKind::Jwks, "/jwks"));
        assert!(!s.ready());
        // A failure keeps it unready and backs off: 2 s, then 4 s.
        assert!(s.on_response(&c, k, Some(500), b"", 100).is_err());
        assert_eq!(s.poll(&c, 101), Ok(None));
        let (k, ..) = s.poll(&c, 102).unwrap().unwrap();
        assert!(s.on_response(&c, k, None, b"", 102).is_err());
        assert_eq!(s.poll(&c, 105), Ok(None));
        let (k, ..) = s.poll(&c, 106).unwrap().unwrap();
        s.on_response(&c, k, Some(200), JWKS, 106).unwrap();
        assert!(s.ready());
        assert_eq!(s.poll(&c, 150), Ok(None));
        // Refresh after the interval: discovery first, keys kept meanwhile.
        let (k, ..) = s.poll(&c, 160).unwrap().unwrap();
        assert_eq!(k, FetchKind::Discovery);
        assert!(s.on_response(&c, k, Some(200), b"not json", 160).is_err());
        assert!(s.ready(), "stale metadata is kept while a refresh fails");
    }

    #[test]
    fn discovery_must_name_our_issuer() {
        let c = cfg(serde_json::json!({}));
        let mut s = IdpState::new(&c);
        let (k, ..) = s.poll(&c, 1).unwrap().unwrap();
        let other = br#"{"issuer":"https://evil.example","authorization_endpoint":"https://a/x",
            "token_endpoint":"https://a/t","jwks_uri":"https://a/j"}"#;
        let err = s.on_response(&c, k, Some(200), other, 1).unwrap_err();
        assert!(err.contains("differs from oidc_issuer_url"), "{err}");
        assert!(s.provider.is_none());
    }

    #[test]
    fn unroutable_jwks_host_is_reported() {
        let c = cfg(serde_json::json!({}));
        let mut s = IdpState::new(&c);
        let (k, ..) = s.poll(&c, 1).unwrap().unwrap();
        s.on_response(
            &c,
            k,
            Some(200),
            &discovery("https://keys.example.net/jwks"),
            1,
        )
        .unwrap();
        let err = s.poll(&c, 1).unwrap_err();
        assert!(
            err.contains("keys.example.net") && err.contains("idp_clusters"),
            "{err}"
        );
        assert_eq!(s.poll(&c, 2), Ok(None));
        let c2 = cfg(serde_json::json!({"idp_clusters": {"keys.example.net": "keys"}}));
        let (_, call, _) = s.poll(&c2, 61).unwrap().unwrap();
        assert_eq!(call.cluster, "keys");
    }

    /// Finding 13: a forged kid does not block a real rotation that follows, refetches are
    /// bounded per kid and overall, and a login waits for the fetch rather than failing.
    #[test]
    fn unknown_kids_refetch_bounded_per_kid_and_overall() {
        let c = cfg(serde_json::json!({}));
        let mut s = IdpState::new(&c);
        let (k, ..) = s.poll(&c, 1).unwrap().unwrap();
        s.on_response(
            &c,
            k,
            Some(200),
            &discovery("https://issuer.example.com/jwks"),
            1,
        )
        .unwrap();
        let (k, ..) = s.poll(&c, 1).unwrap().unwrap();
        s.on_response(&c, k, Some(200), JWKS, 1).unwrap();
        assert_eq!(s.poll(&c, 100), Ok(None));
        // A forged kid at t=100: the login waits, and the keys are fetched at once.
        assert_eq!(s.on_unknown_kid("forged", 100), UnknownKid::Wait);
        let (k, ..) = s.poll(&c, 100).unwrap().unwrap();
        assert_eq!(k, FetchKind::Jwks);
        // A second login waiting meanwhile starts no second fetch (single flight).
        assert_eq!(s.on_unknown_kid("forged", 100), UnknownKid::Wait);
        assert_eq!(s.poll(&c, 100), Ok(None));
        s.on_response(&c, k, Some(200), JWKS, 101).unwrap();
        s.still_unknown("forged", 101);
        // The same kid again: refused at once, no fetch, for REFUSED_KID_SECS.
        assert_eq!(s.on_unknown_kid("forged", 102), UnknownKid::Refuse);
        assert_eq!(s.poll(&c, 102), Ok(None));
        // A real rotation 10 s later: its kid waits and is fetched for, once the overall
        // interval allows (and not before).
        assert_eq!(s.on_unknown_kid("rotated", 103), UnknownKid::Wait);
        assert_eq!(s.poll(&c, 103), Ok(None));
        let (k, ..) = s
            .poll(&c, 100 + FORCED_JWKS_INTERVAL_SECS)
            .unwrap()
            .unwrap();
        assert_eq!(k, FetchKind::Jwks);
        s.on_response(&c, k, Some(200), JWKS, 106).unwrap();
        // Past REFUSED_KID_SECS a kid may be fetched for again.
        assert_eq!(
            s.on_unknown_kid("forged", 101 + REFUSED_KID_SECS),
            UnknownKid::Wait
        );
        // Refused kids are bounded.
        for i in 0..100 {
            s.still_unknown(&format!("k{i}"), 200);
        }
        assert!(s.refused_kids.len() <= MAX_REFUSED_KIDS);
    }

    #[test]
    fn static_endpoints_skip_discovery() {
        let c = cfg(serde_json::json!({
            "skip_oidc_discovery": true,
            "login_url": "https://issuer.example.com/auth",
            "redeem_url": "https://issuer.example.com/token",
            "oidc_jwks_url": "https://issuer.example.com/keys",
        }));
        let mut s = IdpState::new(&c);
        let (k, call, _) = s.poll(&c, 1).unwrap().unwrap();
        assert_eq!((k, path(&call)), (FetchKind::Jwks, "/keys"));
    }
}
