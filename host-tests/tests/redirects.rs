//! Return URLs: only this host's paths (or allow-listed hosts) — never an open redirect.
mod common;

use common::*;
use serde_json::json;

const EVIL: &[&str] = &[
    "//evil.example",
    "//evil.example/path",
    "/\\evil.example",
    "\\\\evil.example",
    "/\t/evil.example",
    "https://evil.example",
    "https://evil.example/app",
    "http://app.example.com.evil.example/",
    "https://app.example.com@evil.example/",
    "https://evil.example\\@app.example.com/",
    "javascript:alert(1)",
    "data:text/html,x",
    "///evil.example",
    "https:evil.example",
    "https://app.example.com:444/",
];

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Where a completed login via `/oauth2/start?rd=...` sends the browser.
fn after_start(host: &mut host_tests::Host, rd: &str) -> String {
    let (_, out) = login_with_response(
        host,
        &format!("/oauth2/start?rd={}", enc(rd)),
        200,
        |l, now| good_token(now, &l.nonce),
    );
    let r = out.expect_reply();
    assert_eq!(r.status, 302, "{r:#?}");
    r.header("location").unwrap().to_string()
}

#[test]
fn start_rd_never_leaves_the_site() {
    let mut host = ready_host(json!({}));
    for rd in EVIL {
        let loc = after_start(&mut host, rd);
        assert_eq!(loc, "/", "rd={rd:?} led to {loc:?}");
    }
    assert_eq!(after_start(&mut host, "/ok?a=b"), "/ok?a=b");
    assert_eq!(
        after_start(&mut host, "https://app.example.com/x"),
        "https://app.example.com/x"
    );
}

#[test]
fn sign_out_rd_never_leaves_the_site() {
    let mut host = ready_host(json!({}));
    for rd in EVIL {
        let r = host
            .request(browser(&format!("/oauth2/sign_out?rd={}", enc(rd))))
            .expect_reply();
        assert_eq!(r.header("location"), Some("/"), "rd={rd:?}");
    }
    // Two rd parameters: neither is trusted.
    let r = host
        .request(browser("/oauth2/sign_out?rd=%2Fa&rd=%2F%2Fevil.example"))
        .expect_reply();
    assert_eq!(r.header("location"), Some("/"));
}

#[test]
fn whitelisted_domains() {
    let mut host =
        ready_host(json!({"whitelist_domains": [".example.org", "other.example.net:8443"]}));
    assert_eq!(
        after_start(&mut host, "https://a.example.org/x"),
        "https://a.example.org/x"
    );
    assert_eq!(
        after_start(&mut host, "https://other.example.net:8443/"),
        "https://other.example.net:8443/"
    );
    assert_eq!(after_start(&mut host, "https://other.example.net/"), "/");
    assert_eq!(
        after_start(&mut host, "https://example.org.evil.example/"),
        "/"
    );
    let r = host
        .request(browser(
            "/oauth2/sign_out?rd=https%3A%2F%2Fb.example.org%2F",
        ))
        .expect_reply();
    assert_eq!(r.header("location"), Some("https://b.example.org/"));
}

#[test]
fn original_url_with_a_protocol_relative_path_returns_home() {
    let mut host = ready_host(json!({}));
    for path in ["//evil.example", "//evil.example/x?y", "/\\evil.example"] {
        let (_, out) =
            login_with_response(&mut host, path, 200, |l, now| good_token(now, &l.nonce));
        let r = out.expect_reply();
        assert_eq!(
            r.header("location"),
            Some("/"),
            "request path {path:?}: {r:#?}"
        );
    }
    // A plain path with a query comes back as it was.
    let (_, out) = login_with_response(&mut host, "/a/b?c=d&e=%2F%2F", 200, |l, now| {
        good_token(now, &l.nonce)
    });
    assert_eq!(
        out.expect_reply().header("location"),
        Some("/a/b?c=d&e=%2F%2F")
    );
}

#[test]
fn bad_authority_is_a_bad_request() {
    let mut host = ready_host(json!({}));
    for authority in [
        "evil.example/x",
        "a b",
        "",
        "app.example.com\r\nx: y",
        "user@evil.example",
    ] {
        let o = host.request(browser("/").authority(authority));
        assert_eq!(
            reason(&o).as_deref(),
            Some("bad_request"),
            "authority {authority:?}: {o:#?}"
        );
        assert_eq!(o.status(), Some(400));
    }
}
