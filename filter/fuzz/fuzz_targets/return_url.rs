//! `redirect::validate_return_url`: the open-redirect check.
//!
//! Input: `authority \n raw` (no newline: the whole input is `raw`, authority
//! `app.example.com`). The whitelist is fixed, in the forms `Config::parse` leaves.
//!
//! Invariants on an accepted URL: a path starts with one `/` (never `//` or `/\`) and is
//! `raw` unchanged; an absolute URL is http(s), without userinfo, of the request's host and
//! port or of a whitelisted domain (checked here independently), and parses back to itself;
//! nothing accepted holds a control character, space, backslash or non-ASCII byte; accepting
//! is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::domain::{DomainPattern, LeadingDot};
use oidc_filter_core::http::host_of_authority;
use oidc_filter_core::redirect::{validate_return_url, MAX_RETURN_URL};
use url::Url;

fn whitelist() -> Vec<String> {
    [
        ".trusted.example",
        "exact.example:8443",
        "anyport.example:*",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The whitelist rule, written out again: `.d` is `d` and its subdomains, `d` is `d` alone;
/// `:p` that port, `:*` any port, no port only the scheme's default.
fn allowed_by_whitelist(host: &str, port: Option<u16>, wl: &[String]) -> bool {
    wl.iter().any(|e| {
        let (d, p) = match e.rsplit_once(':') {
            Some((d, p)) => (d, Some(p)),
            None => (e.as_str(), None),
        };
        let port_ok = match p {
            None => port.is_none(),
            Some("*") => true,
            Some(p) => p.parse::<u16>().ok() == port,
        };
        let host_ok = match d.strip_prefix('.') {
            Some(bare) => host == bare || host.ends_with(&format!(".{bare}")),
            None => host == d,
        };
        port_ok && host_ok
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (authority, raw) = s.split_once('\n').unwrap_or(("app.example.com", s));
    let wl = whitelist();
    let patterns: Vec<DomainPattern> = wl
        .iter()
        .filter_map(|w| DomainPattern::parse(w, LeadingDot::WithSubdomains, true).ok())
        .collect();
    assert_eq!(patterns.len(), wl.len());
    let Some(out) = validate_return_url(raw, authority, &patterns) else {
        return;
    };
    assert!(!out.is_empty());
    assert!(
        !out.bytes()
            .any(|b| b < 0x21 || b == 0x7f || b == b'\\' || b >= 0x80),
        "accepted a URL with a control, space, backslash or non-ASCII byte: {out:?}"
    );
    if out.starts_with('/') {
        assert!(
            !out.starts_with("//") && !out.starts_with("/\\"),
            "protocol-relative return URL accepted: {out:?}"
        );
        assert_eq!(out, raw, "a relative return URL must pass unchanged");
        // Resolved against our own origin, a browser stays on it.
        let base = Url::parse("https://app.example.com/").expect("base");
        let joined = base.join(&out).expect("a path resolves");
        assert_eq!(joined.host_str(), Some("app.example.com"), "{out:?}");
    } else {
        let u = Url::parse(&out).expect("an absolute return URL parses");
        assert_eq!(
            u.as_str(),
            out,
            "the URL returned is the URL's own serialization"
        );
        assert!(
            u.scheme() == "https" || u.scheme() == "http",
            "scheme {} accepted: {out:?}",
            u.scheme()
        );
        assert!(u.username().is_empty() && u.password().is_none(), "{out:?}");
        let host = u.host_str().expect("a host").to_ascii_lowercase();
        let req_host = host_of_authority(authority).to_ascii_lowercase();
        let req_port = authority
            .strip_prefix(host_of_authority(authority))
            .and_then(|p| p.strip_prefix(':'))
            .and_then(|p| p.parse::<u16>().ok());
        let same = host == req_host && u.port() == req_port;
        assert!(
            same || allowed_by_whitelist(&host, u.port(), &wl),
            "return URL to a foreign host accepted: {out:?} (request authority {authority:?})"
        );
    }
    // (The URL serializer may percent-encode a long URL past the length limit.)
    if out.len() <= MAX_RETURN_URL {
        assert_eq!(
            validate_return_url(&out, authority, &patterns).as_deref(),
            Some(out.as_str()),
            "not idempotent"
        );
    }
});
