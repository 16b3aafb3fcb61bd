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
use oidc_filter_core::config::{Config, RedirectUrl, SameSite, Site};

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
    assert!(
        c.prefix.starts_with('/') && !c.prefix.ends_with('/'),
        "{:?}",
        c.prefix
    );
    for p in [&c.sign_out_path, &c.start_path, &c.auth_path] {
        assert!(
            p.starts_with(&c.prefix) && p.len() > c.prefix.len(),
            "{p:?}"
        );
    }
    assert!(c.callback_path.starts_with('/'), "{:?}", c.callback_path);
    if let RedirectUrl::Path(p) = &c.redirect_url {
        assert!(p.starts_with('/') && !p.starts_with("//"), "{p:?}");
    }
    assert!(c.cookie.path.starts_with('/') && !c.cookie.path.contains(';'));
    if c.cookie.samesite == SameSite::None {
        assert!(c.cookie.secure, "SameSite=None without Secure");
    }
    for d in c.cookie.domains.iter().chain(&c.whitelist_domains) {
        let t = d.to_text();
        assert_eq!(t, t.to_ascii_lowercase());
        assert!(!t.contains(char::is_whitespace), "{t:?}");
    }
    assert!(c.cookie.expire_secs >= 60);
    // Every site names a provider that exists.
    for site in c.hosts.iter().map(|h| &h.site).chain([&c.default_site]) {
        if let Site::Protect { provider, .. } = site {
            assert!(
                *provider < c.providers.len(),
                "site names provider {provider}"
            );
        }
    }
    for h in &c.hosts {
        assert!(!h.patterns.is_empty(), "a hosts entry without a host");
    }
    for (i, p) in c.providers.iter().enumerate() {
        assert!(
            c.providers[..i].iter().all(|q| q.name != p.name),
            "{:?} twice",
            p.name
        );
        if !c.cookie.domains.is_empty() {
            assert!(c.providers[..i]
                .iter()
                .all(|q| q.cookie_name != p.cookie_name));
        }
        assert!(!p.client_id.is_empty() && !p.client_secret.expose().is_empty());
        assert_eq!(p.cookie_binding, format!("{}\n{}", p.issuer, p.client_id));
        assert!(p.scope.split(' ').any(|s| s == "openid"), "{:?}", p.scope);
        let name = &p.cookie_name;
        assert!(!name.is_empty() && name.chars().all(token_char), "{name:?}");
        if name.starts_with("__Secure-") || name.starts_with("__Host-") {
            assert!(c.cookie.secure);
        }
        if name.starts_with("__Host-") {
            assert!(c.cookie.domains.is_empty() && c.cookie.path == "/");
        }
        assert!(p.idp.timeout_ms >= 100, "idp_timeout below its minimum");
        assert!(p.jwks_refresh_secs >= 10);
        // Discovery is fetched from the issuer's own origin, at the well-known path, and
        // the issuer is the canonical string of that URL (iss is compared exactly).
        let d = &p.discovery_url;
        assert!(
            d.path().ends_with("/.well-known/openid-configuration"),
            "{d}"
        );
        assert!(d.query().is_none() && d.fragment().is_none(), "{d}");
        assert!(
            d.as_str().starts_with(p.issuer.trim_end_matches('/')),
            "{d} for {:?}",
            p.issuer
        );
        // A callout to the issuer's own host goes through idp_cluster.
        assert_eq!(
            p.route_for(&p.discovery_url),
            Some((p.idp.cluster.clone(), p.idp.authority.clone()))
        );
    }
    // Every extra JWT issuer has its keys somewhere: a provider of the same issuer, or a
    // fetch source of its own; an audience; accepted algorithms only.
    let sources: Vec<&str> = c.sources().map(|s| s.issuer.as_str()).collect();
    for j in &c.jwt_issuers {
        assert_eq!(
            sources.get(j.fetch).copied(),
            Some(j.source.issuer.as_str()),
            "{j:?}"
        );
        assert!(!j.audiences.is_empty() && j.audiences.iter().all(|a| !a.is_empty()));
        assert!(j
            .algorithms
            .iter()
            .all(|a| oidc_filter_core::oidc::ACCEPTED_ALGS.contains(&a.as_str())));
    }
    // Route patterns are anchored; prefixes are normalised paths.
    let policies = c
        .hosts
        .iter()
        .map(|h| &h.site)
        .chain([&c.default_site])
        .filter_map(|s| match s {
            Site::Protect { policy, .. } => Some(policy),
            _ => None,
        })
        .chain([&c.default_policy]);
    for p in policies {
        for r in &p.routes {
            match &r.path {
                oidc_filter_core::routes::PathMatch::Regex(_) => assert!(r.source.starts_with('^')),
                oidc_filter_core::routes::PathMatch::Prefix(x) => assert_eq!(
                    oidc_filter_core::routes::normalise_path(x).as_deref(),
                    Some(x.as_str())
                ),
            }
        }
    }
    let _ = format!("{c:?}");
    // Deterministic: the same bytes give the same verdict.
    assert!(Config::parse(data, &env).is_ok());
});
