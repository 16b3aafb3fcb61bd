//! `Config::parse` on any plugin configuration.
//!
//! Input: the JSON as Envoy / Istio hands it over. The VM environment holds `COOKIE` (two
//! secrets, comma-separated), `CLIENT` (a client secret) and `EMPTY` (empty).
//!
//! Invariants on an accepted config: what `Config::parse` promises its users (paths under
//! the prefix, a non-empty token cookie name, at least one key, `openid` in the scope, the
//! cookie-prefix and SameSite rules, lower-case domain lists, the cookie binding, callouts to
//! the issuer routed through `idp_cluster`), and parsing is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter::config::{Config, RedirectUrl, SameSite};

fn env(name: &str) -> Option<String> {
    match name {
        "COOKIE" => Some("q83vEjRWeJCrze8SNFZ4kA==, BjsqLqI3hVQyzn3bvtp9kg==".into()),
        "CLIENT" => Some("from-env".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fuzz_target!(|data: &[u8]| {
    let c = match Config::parse(data, &env) {
        Ok(c) => c,
        Err(errors) => {
            assert!(!errors.is_empty(), "refused with no error");
            for e in &errors {
                assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
                let _ = e.to_string();
            }
            return;
        }
    };
    assert!(!c.keys.is_empty(), "no cookie key");
    assert!(!c.client_id.is_empty() && !c.client_secret.expose().is_empty());
    assert_eq!(c.cookie_binding, format!("{}\n{}", c.issuer, c.client_id));
    assert!(c.prefix.starts_with('/') && !c.prefix.ends_with('/'), "{:?}", c.prefix);
    for p in [&c.sign_out_path, &c.start_path, &c.auth_path] {
        assert!(p.starts_with(&c.prefix) && p.len() > c.prefix.len(), "{p:?}");
    }
    assert!(c.callback_path.starts_with('/'), "{:?}", c.callback_path);
    if let RedirectUrl::Path(p) = &c.redirect_url {
        assert!(p.starts_with('/') && !p.starts_with("//"), "{p:?}");
    }
    assert!(c.scope.split(' ').any(|s| s == "openid"), "{:?}", c.scope);
    assert!(!c.cookie.name.is_empty() && c.cookie.name.chars().all(token_char));
    assert!(c.cookie.path.starts_with('/') && !c.cookie.path.contains(';'));
    if c.cookie.samesite == SameSite::None {
        assert!(c.cookie.secure, "SameSite=None without Secure");
    }
    if c.cookie.name.starts_with("__Secure-") || c.cookie.name.starts_with("__Host-") {
        assert!(c.cookie.secure);
    }
    if c.cookie.name.starts_with("__Host-") {
        assert!(c.cookie.domains.is_empty() && c.cookie.path == "/");
    }
    for d in c.cookie.domains.iter().chain(&c.whitelist_domains) {
        assert_eq!(*d, d.to_ascii_lowercase());
        assert!(!d.contains(char::is_whitespace), "{d:?}");
    }
    assert!(c.idp.timeout_ms >= 100, "idp_timeout below its minimum");
    // Discovery is fetched from the issuer's own origin, at the well-known path.
    let d = &c.discovery_url;
    assert!(d.path().ends_with("/.well-known/openid-configuration"), "{d}");
    assert!(d.query().is_none() && d.fragment().is_none(), "{d}");
    assert!(
        c.issuer.to_ascii_lowercase().starts_with(&format!("{}://", d.scheme())),
        "{d} for {:?}",
        c.issuer
    );
    assert!(c.cookie.expire_secs >= 60 && c.jwks_refresh_secs >= 10);
    // A callout to the issuer's own host goes through idp_cluster.
    assert_eq!(
        c.route_for(&c.discovery_url),
        Some((c.idp.cluster.clone(), c.idp.authority.clone()))
    );
    let _ = format!("{c:?}");
    // Deterministic: the same bytes give the same verdict.
    assert!(Config::parse(data, &env).is_ok());
});
