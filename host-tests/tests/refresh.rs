//! Sessions with tokens through the real .wasm: tokens upstream from the sealed cookie, and
//! `cookie_refresh` as the glue carries it out (the request paused for the token call, then
//! resumed with its headers rewritten; the new cookie on the response; the shared record that
//! spares a second call).
mod common;

use std::time::Duration;

use common::*;
use host_tests::{Headers, Outcome, Request};
use serde_json::json;

fn api(path: &str, cookie: &str) -> Request {
    Request::get(path)
        .header("accept", "application/json")
        .cookie(COOKIE, cookie)
}

/// A login whose token response carries a refresh token: the session cookie.
fn login_refreshable(host: &mut host_tests::Host) -> String {
    let (_, out) = login_with_response(host, "/app", 200, |l, now| {
        json!({
            "access_token": "at-1", "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": "rt-1",
            "id_token": id_token(key(0), &claims(now, &l.nonce)),
        })
        .to_string()
    });
    let r = out.expect_reply();
    assert_eq!(r.status, 302, "{r:#?}");
    let c = set_cookies(&r.headers)
        .into_iter()
        .find(|c| c.name == COOKIE)
        .expect("session cookie");
    assert!(c.value.starts_with("3.1."), "sealed: {}", c.value);
    c.value
}

fn continued(o: Outcome) -> (Headers, Headers) {
    match o {
        Outcome::Continued {
            request_headers,
            response_headers,
            ..
        } => (request_headers, response_headers),
        other => panic!("expected the request upstream, got {other:#?}"),
    }
}

#[test]
fn a_due_session_is_refreshed_inline_once_and_its_cookie_reissued() {
    let mut host = ready_host(json!({"cookie_refresh": "1m", "pass_access_token": true}));
    let cookie = login_refreshable(&mut host);
    let (up, down) = continued(host.request(api("/x", &cookie)));
    assert_eq!(up.get_all("x-forwarded-access-token"), ["at-1"]);
    assert!(set_cookies(&down).is_empty(), "young: no new cookie");

    host.advance(Duration::from_secs(61));
    // Due: the request waits for the token endpoint.
    let first = host.request(
        api("/x", &cookie)
            .header("X-Forwarded-Access-Token", "forged")
            .cookie("other", "kept"),
    );
    let Outcome::Paused { callouts } = first else {
        panic!("expected a paused request, got {first:#?}")
    };
    assert_eq!(callouts.len(), 1);
    let c = &callouts[0];
    assert_eq!((c.method(), c.path()), ("POST", "/token"));
    let form = String::from_utf8(c.body.clone()).unwrap();
    assert!(
        form.contains("grant_type=refresh_token") && form.contains("refresh_token=rt-1"),
        "{form}"
    );
    // Meanwhile another request of the session: no second call, on it goes unchanged.
    let (up, down) = continued(host.request(api("/y", &cookie)));
    assert_eq!(up.get_all("x-forwarded-access-token"), ["at-1"]);
    assert!(set_cookies(&down).is_empty());
    assert_eq!(host.pending_callouts().len(), 1);

    let now = host.now_secs();
    let mut refreshed = claims(now, "");
    refreshed.as_object_mut().unwrap().remove("nonce");
    let body = json!({
        "access_token": "at-2", "token_type": "Bearer", "expires_in": 3600,
        "refresh_token": "rt-2",
        "id_token": id_token(key(0), &refreshed),
    });
    let (up, down) = continued(host.respond(c.token, 200, &[], body.to_string()));
    // Resumed with the refreshed identity, the client's copy gone, our cookie stripped.
    assert_eq!(up.get_all("x-forwarded-access-token"), ["at-2"]);
    assert_eq!(up.get_all("cookie"), ["other=kept"]);
    let fresh = set_cookies(&down)
        .into_iter()
        .find(|c| c.name == COOKIE)
        .expect("the refreshed session's cookie");
    assert_ne!(fresh.value, cookie);
    assert!(fresh.has("HttpOnly"), "{fresh:?}");
    assert!(
        host.log_text().contains("session refreshed"),
        "{}",
        host.log_text()
    );
    assert!(!host.log_text().contains("rt-2") && !host.log_text().contains("at-2"));

    // The previous cookie moments later: the refreshed session and its cookie, no call.
    let (up, down) = continued(host.request(api("/z", &cookie)));
    assert_eq!(up.get_all("x-forwarded-access-token"), ["at-2"]);
    assert_eq!(
        set_cookies(&down)
            .into_iter()
            .find(|c| c.name == COOKIE)
            .map(|c| c.value),
        Some(fresh.value.clone())
    );
    // The new cookie: not due.
    let (up, down) = continued(host.request(api("/z", &fresh.value)));
    assert_eq!(up.get_all("x-forwarded-access-token"), ["at-2"]);
    assert!(set_cookies(&down).is_empty());
    assert!(host.pending_callouts().is_empty());
}

#[test]
fn a_refused_refresh_is_a_new_login_or_401() {
    let mut host = ready_host(json!({"cookie_refresh": "1m"}));
    let cookie = login_refreshable(&mut host);
    // Past the grace period after it fell due (a refusal within it leaves it working).
    host.advance(Duration::from_secs(121));
    let Outcome::Paused { callouts } = host.request(api("/x", &cookie)) else {
        panic!("not paused")
    };
    let out = host.respond(
        callouts[0].token,
        400,
        &[("content-type", "application/json")],
        r#"{"error":"invalid_grant"}"#,
    );
    let r = assert_reply(out, 401, "refresh_refused");
    assert!(set_cookies(&r.headers)
        .iter()
        .any(|c| c.name == COOKIE && c.value.is_empty()));
    // A navigation with the same cookie: straight to the provider, no second call.
    let r = host
        .request(browser("/page").cookie(COOKIE, &cookie))
        .expect_reply();
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().starts_with(ISSUER), "{r:#?}");
    assert!(host.pending_callouts().is_empty());
}

#[test]
fn a_chunked_session_with_tokens_goes_upstream_without_its_cookies() {
    let mut host =
        ready_host(json!({"pass_access_token": true, "pass_authorization_header": true}));
    let big = "t".repeat(7000);
    let (_, out) = login_with_response(&mut host, "/app", 200, |l, now| {
        json!({
            "access_token": big, "token_type": "Bearer", "expires_in": 3600,
            "id_token": id_token(key(0), &claims(now, &l.nonce)),
        })
        .to_string()
    });
    let r = out.expect_reply();
    assert_eq!(r.status, 302, "{r:#?}");
    let chunks: Vec<_> = set_cookies(&r.headers)
        .into_iter()
        .filter(|c| c.name.starts_with(COOKIE) && !c.name.contains("_csrf_") && !c.value.is_empty())
        .collect();
    let names: Vec<&str> = chunks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [COOKIE, "_oauth2_proxy_1", "_oauth2_proxy_2"]);
    assert!(chunks.iter().all(|c| c.name.len() + c.value.len() < 4000));
    let mut req = Request::get("/x")
        .header("accept", "application/json")
        .cookie("before", "1");
    for c in &chunks {
        req = req.cookie(&c.name, &c.value);
    }
    let up = host
        .request(
            req.cookie("after", "2")
                .header("authorization", "Basic client"),
        )
        .expect_continued();
    assert_eq!(up.get_all("x-forwarded-access-token"), [big.as_str()]);
    let auth = up.get_all("authorization");
    assert!(
        auth.len() == 1 && auth[0].starts_with("Bearer ey"),
        "{auth:?}"
    );
    assert_eq!(up.get_all("cookie"), ["before=1; after=2"]);
    // Without its last chunk the session is incomplete: refused.
    let mut req = Request::get("/x").header("accept", "application/json");
    for c in &chunks[..2] {
        req = req.cookie(&c.name, &c.value);
    }
    assert_reply(host.request(req), 401, "unauthenticated");
}
