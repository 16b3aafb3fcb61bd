//! The session cookie: tampering, expiry, keys, rotation, and what goes upstream.
mod common;

use std::time::Duration;

use common::*;
use host_tests::{Outcome, Request};
use serde_json::json;

#[track_caller]
fn refused(o: Outcome) {
    match &o {
        Outcome::Replied {
            status: 302,
            headers,
            ..
        } => {
            assert!(
                headers.get("location").unwrap().starts_with(ISSUER),
                "{o:#?}"
            );
        }
        other => panic!("expected a new login, got {other:#?}"),
    }
}

#[test]
fn tampered_cookies_are_refused() {
    let mut host = ready_host(json!({}));
    let (_, v) = login(&mut host);
    let parts: Vec<&str> = v.split('.').collect();
    assert_eq!(parts.len(), 3, "version.payload.mac: {v}");
    let flip = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b[2] = if b[2] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let variants = [
        format!("{}.{}.{}", parts[0], flip(parts[1]), parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], flip(parts[2])),
        format!("1.{}.{}", parts[1], parts[2]),
        format!("3.{}.{}", parts[1], parts[2]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{v}.x"),
        v[..v.len() - 1].to_string(),
        String::new(),
        "garbage".into(),
        "1.%%%.%%%".into(),
        "x".repeat(5000),
    ];
    for bad in variants {
        refused(host.request(browser("/app").cookie(COOKIE, &bad)));
        let o = host.request(
            Request::get("/api")
                .header("accept", "application/json")
                .cookie(COOKIE, &bad),
        );
        assert_eq!(o.status(), Some(401), "{o:#?}");
    }
    // The good one still works, also next to a bad copy (a browser may hold several).
    assert!(host
        .request(browser("/").cookie(COOKIE, "garbage").cookie(COOKIE, &v))
        .is_continued());
}

#[test]
fn cookie_is_bound_to_its_name() {
    let mut host = ready_host(json!({}));
    let (_, v) = login(&mut host);
    let mut other = ready_host(json!({"cookie_name": "other"}));
    refused(other.request(browser("/").cookie("other", &v)));
}

#[test]
fn expired_session_starts_a_new_login() {
    let mut host = ready_host(json!({"cookie_expire": "1h"}));
    let (_, v) = login(&mut host);
    host.advance(Duration::from_secs(3590));
    serve_pending(&mut host);
    assert!(host.request(browser("/").cookie(COOKIE, &v)).is_continued());
    host.advance(Duration::from_secs(11));
    serve_pending(&mut host);
    refused(host.request(browser("/").cookie(COOKIE, &v)));
    // Default 168h.
    let mut host = ready_host(json!({}));
    let (_, v) = login(&mut host);
    host.advance(Duration::from_secs(168 * 3600 - 10));
    serve_pending(&mut host);
    assert!(host.request(browser("/").cookie(COOKIE, &v)).is_continued());
    host.advance(Duration::from_secs(20));
    serve_pending(&mut host);
    refused(host.request(browser("/").cookie(COOKIE, &v)));
}

/// Answers any refresh the timer started with the same metadata and keys.
fn serve_pending(host: &mut host_tests::Host) {
    for _ in 0..3 {
        serve_refresh(host, &[key(0)]);
    }
}

#[test]
fn cookie_signed_with_another_secret_is_refused() {
    let mut a = ready_host(json!({"cookie_secret": SECRET_A}));
    let (_, va) = login(&mut a);
    let mut b = ready_host(json!({"cookie_secret": SECRET_B}));
    refused(b.request(browser("/").cookie(COOKIE, &va)));
}

#[test]
fn rotated_secret_still_accepted() {
    // Old deployment signs with A.
    let mut old = ready_host(json!({"cookie_secret": SECRET_A}));
    let (_, from_old) = login(&mut old);
    // New deployment: [B, A] — B signs, both verify.
    let mut new = ready_host(json!({"cookie_secret": [SECRET_B, SECRET_A]}));
    let h = new
        .request(browser("/").cookie(COOKIE, &from_old))
        .expect_continued();
    assert_eq!(h.get("x-forwarded-user"), Some("user-123"));
    let (_, from_new) = login(&mut new);
    assert!(new
        .request(browser("/").cookie(COOKIE, &from_new))
        .is_continued());
    // The new cookie is signed with B: the old deployment refuses it, B alone accepts it.
    refused(old.request(browser("/").cookie(COOKIE, &from_new)));
    let mut only_b = ready_host(json!({"cookie_secret": [SECRET_B]}));
    assert!(only_b
        .request(browser("/").cookie(COOKIE, &from_new))
        .is_continued());
    refused(only_b.request(browser("/").cookie(COOKIE, &from_old)));
    // A login begun before the rotation completes after it.
    let login_old = begin_login(&mut old, browser("/app"));
    let c = callback_paused(&mut new, &login_old, "c");
    check_token_request(&c[0], &login_old, "c");
}

#[test]
fn forged_identity_headers_are_stripped() {
    let mut host = ready_host(json!({"set_xauthrequest": true}));
    let (_, v) = login(&mut host);
    let forged = [
        "x-forwarded-user",
        "X-Forwarded-User",
        "X-FORWARDED-EMAIL",
        "x_forwarded_user",
        "X_Forwarded_Email",
        "x-forwarded-preferred-username",
        "x_forwarded_preferred_username",
        "x-auth-request-user",
        "X-Auth-Request-Email",
        "x_auth_request_user",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "x-auth-request-access-token",
    ];
    let with_forged = |mut req: Request| {
        for (i, name) in forged.iter().enumerate() {
            req = req.header_raw(name, &format!("admin-{i}"));
        }
        req
    };
    // With a session: ours replace theirs.
    let h = host
        .request(with_forged(browser("/").cookie(COOKIE, &v)))
        .expect_continued();
    assert!(
        !format!("{h:?}").contains("admin-"),
        "forged values gone: {h:#?}"
    );
    assert_eq!(h.get_all("x-forwarded-user"), vec!["user-123"]);
    assert_eq!(h.get_all("x-auth-request-email"), vec!["alice@example.com"]);
    // Envoy lower-cases names: the same with lower-cased input.
    let mut req = browser("/").cookie(COOKIE, &v);
    for name in forged {
        req = req.header(name, "admin");
    }
    let h = host.request(req).expect_continued();
    assert!(h.iter().all(|(_, v)| v != "admin"), "{h:#?}");
    // Without a session they never pass at all.
    let o = host.request(with_forged(browser("/")));
    assert_eq!(o.status(), Some(302));
    // Unrelated x- headers are kept.
    let h = host
        .request(
            browser("/")
                .cookie(COOKIE, &v)
                .header("x-forwarded-for", "10.0.0.1")
                .header("x-user-agent", "u"),
        )
        .expect_continued();
    assert_eq!(h.get("x-forwarded-for"), Some("10.0.0.1"));
    assert_eq!(h.get("x-user-agent"), Some("u"));
}

#[test]
fn our_cookies_never_reach_the_upstream() {
    let mut host = ready_host(json!({}));
    let (_, v) = login(&mut host);
    let pending = begin_login(&mut host, browser("/"));
    let req = Request::get("/")
        .header_raw("cookie", &format!("a=1; {COOKIE}={v}"))
        .header_raw(
            "cookie",
            &format!(
                "{}={}; b=2",
                pending.flow_cookie.name, pending.flow_cookie.value
            ),
        );
    let h = host.request(req).expect_continued();
    let all = h.get_all("cookie").join("; ");
    assert!(!all.contains(COOKIE), "{h:#?}");
    assert!(all.contains("a=1") && all.contains("b=2"), "{h:#?}");
}

#[test]
fn session_on_http1_post_with_body_continues() {
    let mut host = ready_host(json!({}));
    let (_, v) = login(&mut host);
    let out = host.request(
        Request::post("/api/items")
            .cookie(COOKIE, &v)
            .body("{\"a\":1}"),
    );
    match out {
        Outcome::Continued {
            request_headers,
            request_body,
            ..
        } => {
            assert_eq!(request_body, b"{\"a\":1}");
            assert_eq!(request_headers.get("x-forwarded-user"), Some("user-123"));
        }
        other => panic!("{other:#?}"),
    }
}
