//! Return-URL validation: where a user may be sent after login or sign-out.
//!
//! Allowed: a path on this host (`/…`, not `//…` or `/\…`), or an absolute http(s) URL whose
//! host is this request's host or matches `whitelist_domains`. Everything else is refused and
//! the caller falls back to `/`. The same check serves `rd` and the URL a user first asked for.

use url::Url;

use crate::domain::DomainPattern;
use crate::http::host_of_authority;

pub const MAX_RETURN_URL: usize = 2048;

/// Returns the URL to redirect to, or `None` when `raw` must not be used.
pub fn validate_return_url(
    raw: &str,
    request_authority: &str,
    whitelist: &[DomainPattern],
) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_RETURN_URL {
        return None;
    }
    // Control characters, spaces and backslashes are never needed and are how parsers are
    // made to disagree (`/\evil.com`, `/\t/evil.com`).
    if raw
        .bytes()
        .any(|b| b < 0x21 || b == 0x7f || b == b'\\' || b >= 0x80)
    {
        return None;
    }
    if raw.starts_with('/') {
        // A protocol-relative URL (`//host`) leaves this host.
        if raw.starts_with("//") {
            return None;
        }
        return Some(raw.to_string());
    }
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let u = Url::parse(raw).ok()?;
    if !u.username().is_empty() || u.password().is_some() {
        return None;
    }
    let host = u.host_str()?.to_ascii_lowercase();
    let port = u.port();
    let req_host = host_of_authority(request_authority).to_ascii_lowercase();
    let req_port = request_authority
        .strip_prefix(host_of_authority(request_authority))
        .and_then(|p| p.strip_prefix(':'))
        .and_then(|p| p.parse::<u16>().ok());
    let same_host = host == req_host && port == req_port;
    if same_host || whitelist.iter().any(|w| w.matches_with_port(&host, port)) {
        Some(u.as_str().to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LeadingDot;

    fn v(raw: &str) -> Option<String> {
        validate_return_url(
            raw,
            "app.example.com",
            &[".trusted.example", "exact.example:8443"].map(|w| {
                DomainPattern::parse(w, crate::domain::LeadingDot::WithSubdomains, true).unwrap()
            }),
        )
    }

    #[test]
    fn relative_paths_pass() {
        assert_eq!(v("/").as_deref(), Some("/"));
        assert_eq!(v("/a/b?c=d&e=%2F").as_deref(), Some("/a/b?c=d&e=%2F"));
        assert_eq!(
            v("/%2F%2Fevil.example").as_deref(),
            Some("/%2F%2Fevil.example")
        );
    }

    #[test]
    fn open_redirects_refused() {
        for raw in [
            "//evil.example/",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "https://evil.example/",
            "https:evil.example",
            "https:/evil.example",
            "javascript:alert(1)",
            "data:text/html,x",
            "ftp://app.example.com/",
            "https://app.example.com@evil.example/",
            "https://user:pw@app.example.com/",
            "https://evil.example\\@app.example.com/",
            "https://trusted.example.evil.example/",
            "https://eviltrusted.example/",
            "https://exact.example/",
            "https://exact.example:9443/",
            "evil.example",
            " /x",
            "",
        ] {
            assert_eq!(v(raw), None, "{raw:?}");
        }
        assert_eq!(v(&format!("/{}", "a".repeat(MAX_RETURN_URL))), None);
    }

    #[test]
    fn allowed_absolute_urls() {
        assert_eq!(
            v("https://app.example.com/x").as_deref(),
            Some("https://app.example.com/x")
        );
        assert_eq!(
            v("HTTPS://sub.trusted.example/p?q=1").as_deref(),
            Some("https://sub.trusted.example/p?q=1")
        );
        assert!(v("https://trusted.example/").is_some());
        assert!(v("https://exact.example:8443/").is_some());
        // Same host but another port is another origin.
        assert_eq!(v("https://app.example.com:444/"), None);
        assert!(validate_return_url("http://localhost:8080/x", "localhost:8080", &[]).is_some());
    }

    #[test]
    fn any_port_wildcard() {
        let w = [
            DomainPattern::parse("internal.example:*", LeadingDot::WithSubdomains, true).unwrap(),
        ];
        assert!(validate_return_url("https://internal.example:9000/", "a", &w).is_some());
        assert!(validate_return_url("https://internal.example/", "a", &w).is_some());
    }
}
