//! Sessions that hold tokens: the sealed format, chunk cookies (and their clean-up when a
//! session shrinks), tokens upstream and in `/oauth2/auth` replies, and sign-out at the
//! provider (RP-Initiated Logout).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use oidc_filter_core::flow::{Decision, LocalReply, PendingLogin, TokenOutcome};
use oidc_filter_core::http::Request;
use oidc_filter_core::oidc::Provider;
use serde_json::{json, Value};

const NAME: &str = "_oauth2_proxy";

/// The code exchange of a login for `/app`, with `cookies` on the callback request.
fn exchange(w: &mut World, cookies: &[(String, String)]) -> (PendingLogin, String) {
    let (auth, flow) = start_login(w, "/app");
    let nonce = param(&query(&auth), "nonce");
    let mut all = vec![flow.clone()];
    all.extend_from_slice(cookies);
    let state = param(&query(&auth), "state");
    let req = with_cookies(
        get(&format!("/oauth2/callback?code=the-code&state={state}")),
        &all,
    );
    let Decision::ExchangeCode { pending, .. } = w.request(&req) else {
        panic!("no code exchange");
    };
    (pending, nonce)
}

/// A login whose token response carries `access_token` (and the ID token has `extra`
/// claims), with `cookies` on the callback: the callback's reply.
fn login_tokens(
    w: &mut World,
    access_token: &str,
    extra: Value,
    cookies: &[(String, String)],
) -> LocalReply {
    let (pending, nonce) = exchange(w, cookies);
    let mut c = claims(&nonce);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    let k = rsa_key(0);
    let id = sign_rs256(k, &json!({"alg": "RS256", "kid": k.kid}), &c);
    let body = json!({
        "access_token": access_token, "token_type": "Bearer", "expires_in": 300,
        "id_token": id, "refresh_token": "rt-1",
    });
    match w.token_response(&pending, Some(200), body.to_string().as_bytes(), true) {
        TokenOutcome::Reply(r) => r,
        other => panic!("{other:?}"),
    }
}

/// The session cookies a reply sets (name, value), chunk 0 first, and the names it clears.
fn session_set(r: &LocalReply) -> (Vec<(String, String)>, Vec<String>) {
    let mut set = Vec::new();
    let mut cleared = Vec::new();
    for c in set_cookies(r) {
        let (k, v) = cookie_pair(c);
        if !k.starts_with(NAME) || k.contains("_csrf_") {
            continue;
        }
        if v.is_empty() {
            cleared.push(k);
        } else {
            assert!(c.len() < 4096, "a Set-Cookie line over 4 KB: {}", c.len());
            set.push((k, v));
        }
    }
    (set, cleared)
}

fn api(path: &str, cookies: &[(String, String)]) -> Request<'static> {
    let mut r = with_cookies(get(path), cookies);
    r.headers.retain(|(k, _)| k != "accept");
    with_header(r, "accept", "application/json")
}

fn tokens_config() -> oidc_filter_core::config::Config {
    config_with(json!({"pass_access_token": true, "pass_authorization_header": true}))
}

#[test]
fn tokens_reach_the_upstream_and_the_cookie_holds_them_sealed() {
    let mut w = World::new(tokens_config());
    let r = login_tokens(&mut w, "access-token-of-alice", json!({}), &[]);
    let (set, _) = session_set(&r);
    assert_eq!(set.len(), 1, "{set:?}");
    let value = &set[0].1;
    assert!(value.starts_with("3.1."), "{value}");
    // Sealed: neither token nor identity is readable in the cookie.
    for plain in ["access-token-of-alice", "alice", "YWxpY2"] {
        assert!(!value.contains(plain), "{plain} in {value}");
    }
    let forged = with_header(api("/x", &set), "X-Forwarded-Access-Token", "forged");
    let forged = with_header(forged, "authorization", "Bearer forged");
    let h = upstream(&mut w, &forged);
    assert_eq!(
        values(&h, "x-forwarded-access-token"),
        ["access-token-of-alice"]
    );
    // set_xauthrequest is on in the fixture config.
    assert_eq!(
        values(&h, "x-auth-request-access-token"),
        ["access-token-of-alice"]
    );
    let auth = values(&h, "authorization");
    assert_eq!(auth.len(), 1, "{h:?}");
    let id = auth[0].strip_prefix("Bearer ").unwrap();
    assert_eq!(id.split('.').count(), 3, "the ID token: {id}");
    assert!(values(&h, "x-forwarded-email") == ["alice@example.com"]);
    // No session cookie reaches the upstream.
    assert!(
        values(&h, "cookie").iter().all(|c| !c.contains(NAME)),
        "{h:?}"
    );

    // A flipped byte in the sealed part is refused.
    let mut bad = set.clone();
    let mut b = bad[0].1.clone().into_bytes();
    let at = b.len() - 10;
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    bad[0].1 = String::from_utf8(b).unwrap();
    let r = reply(w.request(&api("/x", &bad)));
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn without_a_feature_that_needs_them_no_token_is_kept() {
    let mut w = World::new(config());
    let r = login_tokens(&mut w, "access-token-of-alice", json!({}), &[]);
    let (set, _) = session_set(&r);
    assert_eq!(set.len(), 1);
    assert!(!set[0].1.starts_with("3."), "{}", set[0].1);
    let forged = with_header(api("/x", &set), "x-forwarded-access-token", "forged");
    let forged = with_header(forged, "authorization", "Basic client-own");
    let h = upstream(&mut w, &forged);
    assert!(values(&h, "x-forwarded-access-token").is_empty(), "{h:?}");
    assert!(values(&h, "x-auth-request-access-token").is_empty());
    // The client's own Authorization is not ours to touch without pass_authorization_header.
    assert_eq!(values(&h, "authorization"), ["Basic client-own"]);
}

#[test]
fn auth_endpoint_replies_carry_tokens_as_configured() {
    let mut w = World::new(config_with(
        json!({"pass_access_token": true, "set_authorization_header": true}),
    ));
    let r = login_tokens(&mut w, "at-2", json!({}), &[]);
    let (set, _) = session_set(&r);
    let r = reply(w.request(&api("/oauth2/auth", &set)));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(header(&r, "x-auth-request-access-token"), Some("at-2"));
    assert!(header(&r, "authorization")
        .unwrap()
        .starts_with("Bearer ey"));
    // set_authorization_header is for auth replies; upstream gets the ID token only with
    // pass_authorization_header.
    let h = upstream(&mut w, &api("/x", &set));
    assert!(values(&h, "authorization").is_empty(), "{h:?}");
    assert_eq!(values(&h, "x-forwarded-access-token"), ["at-2"]);
}

#[test]
fn a_large_session_is_chunked_each_chunk_needed_and_shrinks_cleanly() {
    let mut w = World::new(tokens_config());
    let big = "a".repeat(7000);
    let r = login_tokens(&mut w, &big, json!({}), &[]);
    assert_eq!(
        (r.status, r.reason.code()),
        (302, "login_complete"),
        "{r:?}"
    );
    let (set, cleared) = session_set(&r);
    assert!(cleared.is_empty());
    let names: Vec<&str> = set.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [NAME, "_oauth2_proxy_1", "_oauth2_proxy_2"],
        "{set:?}"
    );
    assert!(set[0].1.starts_with("3.3."), "{}", &set[0].1[..10]);

    let h = upstream(&mut w, &api("/x", &set));
    assert_eq!(values(&h, "x-forwarded-access-token"), [big.as_str()]);
    assert!(
        values(&h, "cookie").iter().all(|c| !c.contains(NAME)),
        "chunks stripped"
    );
    // Cookies arrive in any order.
    let mut shuffled = set.clone();
    shuffled.reverse();
    upstream(&mut w, &api("/x", &shuffled));
    // Each chunk is needed, and a chunk from another session does not fit.
    for drop in 1..3 {
        let mut less = set.clone();
        less.remove(drop);
        let r = reply(w.request(&api("/x", &less)));
        assert_eq!(r.status, 401, "without chunk {drop}: {r:?}");
    }
    let r2 = login_tokens(&mut w, &"b".repeat(7000), json!({}), &set);
    let (other, _) = session_set(&r2);
    let mut mixed = set.clone();
    mixed[1] = other[1].clone();
    let r = reply(w.request(&api("/x", &mixed)));
    assert_eq!(r.status, 401, "{r:?}");

    // A new login with a small session (the browser still holds 3 chunks): chunk 0 only,
    // and both stale chunks cleared with the attributes they were set with.
    let r = login_tokens(&mut w, "small", json!({}), &set);
    let (small, cleared) = session_set(&r);
    assert_eq!(small.len(), 1, "{small:?}");
    assert_eq!(cleared, ["_oauth2_proxy_1", "_oauth2_proxy_2"]);
    for c in set_cookies(&r)
        .iter()
        .filter(|c| c.starts_with("_oauth2_proxy_1="))
    {
        assert!(c.contains("Max-Age=0") && c.contains("Path=/"), "{c}");
    }
    // The small session works with the stale chunks still sent (a browser that lost the
    // clear), and they do not reach the upstream.
    let mut with_stale = small.clone();
    with_stale.extend(set[1..].iter().cloned());
    let h = upstream(&mut w, &api("/x", &with_stale));
    assert_eq!(values(&h, "x-forwarded-access-token"), ["small"]);
    assert!(
        values(&h, "cookie").iter().all(|c| !c.contains(NAME)),
        "{h:?}"
    );
}

#[test]
fn verified_cookies_are_served_again_only_when_the_same_and_still_valid() {
    let mut w = World::new(tokens_config());
    w.verified = Some(Default::default());
    let big = "a".repeat(7000);
    let r = login_tokens(&mut w, &big, json!({}), &[]);
    let (set, _) = session_set(&r);
    assert_eq!(set.len(), 3, "{set:?}");
    for _ in 0..3 {
        let h = upstream(&mut w, &api("/x", &set));
        assert_eq!(values(&h, "x-forwarded-access-token"), [big.as_str()]);
    }
    let kept = |w: &World| {
        let c = w.verified.as_ref().unwrap().borrow();
        (c.hits, c.len())
    };
    assert_eq!(
        kept(&w),
        (2, 1),
        "verified once, then served from the cache"
    );
    // A changed or missing chunk is not the kept session: verified, and refused.
    let mut changed = set.clone();
    let mut b = changed[2].1.clone().into_bytes();
    b[10] = if b[10] == b'A' { b'B' } else { b'A' };
    changed[2].1 = String::from_utf8(b).unwrap();
    let mut less = set.clone();
    less.remove(1);
    for cookies in [&changed, &less] {
        let r = reply(w.request(&api("/x", cookies)));
        assert_eq!(r.status, 401, "{r:?}");
    }
    assert_eq!(kept(&w), (2, 1), "nothing refused was kept");
    // Past its lifetime (cookie_expire, 168 h by default), a kept session is refused.
    w.now += 168 * 3600;
    let r = reply(w.request(&api("/x", &set)));
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn a_session_over_the_chunk_limit_is_a_clear_error() {
    let mut w = World::new(tokens_config());
    let big = "a".repeat(8000);
    let r = login_tokens(&mut w, &big, json!({"filler": "f".repeat(9000)}), &[]);
    // A 9 KB claim in an ID token kept whole, and an 8 KB access token: over 5 chunks.
    assert_eq!(
        (r.status, r.reason.code()),
        (500, "session_too_large"),
        "{r:?}"
    );
    assert!(r.body.contains("bytes of tokens"), "{}", r.body);
    assert!(session_set(&r).0.is_empty());
}

fn with_end_session(w: &mut World) {
    w.provider = Provider::from_discovery(
        json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://issuer.example.com/authorize",
            "token_endpoint": "https://issuer.example.com/oauth/token",
            "jwks_uri": "https://keys.example.net/jwks.json",
            "end_session_endpoint": "https://issuer.example.com/session/end?x=1",
        })
        .to_string()
        .as_bytes(),
        ISSUER,
    )
    .unwrap();
}

#[test]
fn sign_out_ends_the_provider_session_with_the_id_token_hint() {
    let mut w = World::new(config_with(json!({"end_session": true})));
    with_end_session(&mut w);
    let r = login_tokens(&mut w, &"a".repeat(5000), json!({}), &[]);
    let (set, _) = session_set(&r);
    assert_eq!(set.len(), 1, "only the ID token is kept: {set:?}");
    let r = reply(w.request(&with_cookies(get("/oauth2/sign_out?rd=%2Fbye"), &set)));
    assert_eq!((r.status, r.reason.code()), (302, "signed_out"), "{r:?}");
    let loc = header(&r, "location").unwrap();
    assert!(
        loc.starts_with("https://issuer.example.com/session/end?"),
        "{loc}"
    );
    let q = query(loc);
    assert_eq!(param(&q, "x"), "1");
    assert_eq!(param(&q, "client_id"), CLIENT_ID);
    assert_eq!(
        param(&q, "post_logout_redirect_uri"),
        "https://app.example.com/bye"
    );
    assert_eq!(param(&q, "id_token_hint").split('.').count(), 3);
    assert_eq!(session_set(&r).1, [NAME]);

    // An rd to a foreign site is not passed on: the provider returns the user to `/`.
    let r = reply(w.request(&with_cookies(
        get("/oauth2/sign_out?rd=https%3A%2F%2Fevil.example%2F"),
        &set,
    )));
    let q = query(header(&r, "location").unwrap());
    assert_eq!(
        param(&q, "post_logout_redirect_uri"),
        "https://app.example.com/"
    );
    // Without a session: client_id only.
    let r = reply(w.request(&get("/oauth2/sign_out")));
    let q = query(header(&r, "location").unwrap());
    assert!(q.iter().all(|(k, _)| k != "id_token_hint"), "{q:?}");
    assert_eq!(param(&q, "client_id"), CLIENT_ID);

    // A session with chunks: every chunk the browser sent is cleared.
    w.config = config_with(json!({"end_session": true, "pass_access_token": true}));
    let r = login_tokens(&mut w, &"a".repeat(7000), json!({}), &[]);
    let (set, _) = session_set(&r);
    assert_eq!(set.len(), 3);
    let r = reply(w.request(&with_cookies(get("/oauth2/sign_out"), &set)));
    assert_eq!(
        session_set(&r).1,
        [NAME, "_oauth2_proxy_1", "_oauth2_proxy_2"]
    );
}

#[test]
fn sign_out_stays_local_without_end_session_or_an_endpoint() {
    // end_session off: a local sign-out even though the provider has the endpoint.
    let mut w = World::new(tokens_config());
    with_end_session(&mut w);
    let r = login_tokens(&mut w, "at", json!({}), &[]);
    let (set, _) = session_set(&r);
    let r = reply(w.request(&with_cookies(get("/oauth2/sign_out"), &set)));
    assert_eq!(header(&r, "location"), Some("/"));
    // end_session on, the provider has no endpoint: local too.
    let mut w = World::new(config_with(json!({"end_session": true})));
    let r = login_tokens(&mut w, "at", json!({}), &[]);
    let (set, _) = session_set(&r);
    let r = reply(w.request(&with_cookies(get("/oauth2/sign_out"), &set)));
    assert_eq!(header(&r, "location"), Some("/"));
    assert_eq!(r.reason.code(), "signed_out");
}
