//! `cookie_refresh` and `session_idle_timeout`, driven through the engine as the glue drives
//! it, with the shared record of refreshes kept as the glue keeps it (`refresh::claim` and
//! `refresh::publish` over one list).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use oidc_filter_core::config::Config;
use oidc_filter_core::engine::{Engine, Response, Step, Stream};
use oidc_filter_core::flow::{Decision, Forward, LocalReply, TokenOutcome};
use oidc_filter_core::http::Request;
use oidc_filter_core::idp::FetchKind;
use oidc_filter_core::refresh::{self, Slot};
use rand_core::RngCore;
use serde_json::{json, Value};

const NAME: &str = "_oauth2_proxy";

fn ok(status: u32, body: Vec<u8>) -> Response {
    Response {
        status: Some(status),
        body,
        too_large: false,
    }
}

fn loaded(cfg: Config) -> Engine {
    let mut e = Engine::new(cfg);
    let mut log = Vec::new();
    let mut token = 0;
    loop {
        let due = e.poll_fetches(NOW, &mut log);
        if due.is_empty() {
            break;
        }
        for f in due {
            token += 1;
            e.fetch_sent(&f, Ok(token), NOW, &mut log);
            let body = match f.kind {
                FetchKind::Discovery => json!({
                    "issuer": ISSUER,
                    "authorization_endpoint": "https://issuer.example.com/authorize",
                    "token_endpoint": "https://issuer.example.com/oauth/token",
                    "jwks_uri": "https://keys.example.net/jwks.json",
                }),
                FetchKind::Jwks => json!({"keys": [rsa_jwk(rsa_key(0))]}),
            };
            assert!(e.handle_fetch_response(
                token,
                &ok(200, body.to_string().into_bytes()),
                NOW,
                &mut log
            ));
        }
    }
    e
}

fn random() -> impl FnMut() -> Option<[u8; 32]> {
    let mut r = rng(5);
    move || {
        let mut b = [0u8; 32];
        r.fill_bytes(&mut b);
        Some(b)
    }
}

fn refresh_config(extra: Value) -> Config {
    let mut v = json!({"cookie_refresh": "1m", "pass_access_token": true});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    config_with(v)
}

fn id_token_with(claims_: Value) -> String {
    let k = rsa_key(0);
    sign_rs256(k, &json!({"alg": "RS256", "kid": k.kid}), &claims_)
}

/// A login (through `World`, same config and keys) whose token response has these tokens;
/// the session cookies.
fn login_with(cfg: &Config, extra: Value) -> Vec<(String, String)> {
    let mut w = World::new(cfg.clone());
    let (auth, flow) = start_login(&mut w, "/app");
    let nonce = param(&query(&auth), "nonce");
    let Decision::ExchangeCode { pending, .. } = w.request(&callback_request(&auth, &flow)) else {
        panic!("no code exchange");
    };
    let mut c = claims(&nonce);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    let body = json!({
        "access_token": "at-1", "token_type": "Bearer", "expires_in": 3600,
        "id_token": id_token_with(c), "refresh_token": "rt-1",
    });
    let TokenOutcome::Reply(r) =
        w.token_response(&pending, Some(200), body.to_string().as_bytes(), true)
    else {
        panic!()
    };
    assert_eq!(r.reason.code(), "login_complete", "{r:?}");
    set_cookies(&r)
        .iter()
        .map(|c| cookie_pair(c))
        .filter(|(k, v)| k.starts_with(NAME) && !k.contains("_csrf_") && !v.is_empty())
        .collect()
}

fn api(cookies: &[(String, String)]) -> Request<'static> {
    let mut r = with_cookies(get("/x"), cookies);
    r.headers.retain(|(k, _)| k != "accept");
    with_header(r, "accept", "application/json")
}

/// The claims of an ID token a refresh at `at` returns: no nonce, good for 5 minutes.
fn refreshed_claims(at: u64) -> Value {
    let mut c = claims("");
    c.as_object_mut().unwrap().remove("nonce");
    c["exp"] = json!(at + 300);
    c
}

fn refreshed_body(access: &str, refresh: Option<&str>, id: Option<String>) -> Vec<u8> {
    let mut b = json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
    if let Some(r) = refresh {
        b["refresh_token"] = json!(r);
    }
    if let Some(i) = id {
        b["id_token"] = json!(i);
    }
    b.to_string().into_bytes()
}

/// Carries out `step` as the glue would with the shared `list`, answering a token call with
/// `answer` (counting calls in `calls`); the final step (Forward or Reply).
fn drive(
    e: &mut Engine,
    s: &mut Stream,
    mut step: Step,
    list: &mut Vec<u8>,
    now: u64,
    calls: &mut Vec<String>,
    answer: &dyn Fn() -> Response,
) -> Step {
    loop {
        step = match step {
            Step::RefreshSlot { id, until } => {
                let slot = match refresh::claim(list, &id, now, until) {
                    Ok(next) => {
                        *list = next;
                        Slot::Mine
                    }
                    Err(slot) => slot,
                };
                s.handle_slot(e, Ok(slot), now)
            }
            Step::Dispatch(c) => {
                calls.push(String::from_utf8(c.body.clone()).unwrap());
                assert_eq!(s.handle_dispatch(Ok(900)), Step::Wait);
                s.handle_callout(e, 900, answer(), now).unwrap()
            }
            Step::Publish { id, record, then } => {
                *list = refresh::publish(list, &id, &record, now);
                *then
            }
            done @ (Step::Forward(_) | Step::Reply(_)) => return done,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// One request at `now` whose refresh the token endpoint answers 200 with `body`.
fn refresh_once(e: &mut Engine, req: &Request<'static>, now: u64, body: &[u8]) -> Step {
    let mut s = Stream::new(1);
    let step = s.handle_request(e, req, now, &mut random());
    drive(
        e,
        &mut s,
        step,
        &mut Vec::new(),
        now,
        &mut Vec::new(),
        &|| ok(200, body.to_vec()),
    )
}

fn forwarded_of(req: &Request<'static>, cfg: &Config, f: &Forward) -> Vec<(String, String)> {
    forwarded(cfg, req, f)
}

fn new_cookies(f: &Forward) -> Vec<(String, String)> {
    f.set_cookies
        .iter()
        .map(|c| cookie_pair(c))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

#[test]
fn a_due_session_is_refreshed_once_and_its_cookies_reissued() {
    let cfg = refresh_config(json!({"allowed_groups": ["staff", "admins"]}));
    let cookies = login_with(&cfg, json!({"groups": ["staff"]}));
    let mut e = loaded(cfg.clone());
    let mut list = Vec::new();
    let mut calls = Vec::new();
    let req = api(&cookies);

    // Young: no refresh, no cookie.
    let mut s = Stream::new(1);
    let Step::Forward(f) = s.handle_request(&mut e, &req, NOW + 30, &mut random()) else {
        panic!()
    };
    assert!(f.set_cookies.is_empty());

    // Past cookie_refresh: one token call with the refresh token; the new ID token moves the
    // user to another group, and the refresh token rotates.
    let later = NOW + 61;
    let mut c = refreshed_claims(later);
    c["iat"] = json!(later);
    c["groups"] = json!(["admins"]);
    let body = refreshed_body("at-2", Some("rt-2"), Some(id_token_with(c)));
    let answer = || ok(200, body.clone());
    let mut s = Stream::new(2);
    let step = s.handle_request(&mut e, &req, later, &mut random());
    assert!(matches!(step, Step::RefreshSlot { .. }), "{step:?}");
    let Step::Forward(f) = drive(&mut e, &mut s, step, &mut list, later, &mut calls, &answer)
    else {
        panic!()
    };
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].contains("grant_type=refresh_token") && calls[0].contains("refresh_token=rt-1"),
        "{}",
        calls[0]
    );
    let h = forwarded_of(&req, &cfg, &f);
    assert_eq!(values(&h, "x-forwarded-access-token"), ["at-2"]);
    assert_eq!(f.log.as_deref(), Some("session refreshed"));
    let fresh = new_cookies(&f);
    assert_eq!(fresh.len(), 1);
    assert!(
        f.set_cookies[0].contains("Max-Age="),
        "{}",
        f.set_cookies[0]
    );

    // Nineteen more requests with the previous cookie, moments later: no token call; each
    // goes on as the refreshed session and gets its cookie.
    for i in 0..19 {
        let mut s = Stream::new(10 + i);
        let step = s.handle_request(&mut e, &req, later + 1, &mut random());
        let Step::Forward(f) = drive(
            &mut e,
            &mut s,
            step,
            &mut list,
            later + 1,
            &mut calls,
            &answer,
        ) else {
            panic!()
        };
        assert_eq!(
            values(&forwarded_of(&req, &cfg, &f), "x-forwarded-access-token"),
            ["at-2"]
        );
        assert_eq!(new_cookies(&f), fresh);
    }
    assert_eq!(calls.len(), 1, "one token call for twenty requests");

    // The new cookie: not due, the new groups apply, and the new refresh token is the one
    // the next refresh will use.
    let req2 = api(&fresh);
    let mut s = Stream::new(40);
    let Step::Forward(f) = s.handle_request(&mut e, &req2, later + 30, &mut random()) else {
        panic!()
    };
    assert!(f.set_cookies.is_empty());
    let mut s = Stream::new(41);
    let step = s.handle_request(&mut e, &req2, later + 62, &mut random());
    drive(
        &mut e,
        &mut s,
        step,
        &mut list,
        later + 62,
        &mut calls,
        &answer,
    );
    assert!(calls[1].contains("refresh_token=rt-2"), "{}", calls[1]);
}

#[test]
fn concurrent_requests_while_a_refresh_is_in_flight_go_on_unchanged() {
    let cfg = refresh_config(json!({}));
    let cookies = login_with(&cfg, json!({}));
    let mut e = loaded(cfg.clone());
    let req = api(&cookies);
    let later = NOW + 61;
    let mut list = Vec::new();
    // The first claims the refresh and waits for the token endpoint.
    let mut first = Stream::new(1);
    let Step::RefreshSlot { id, until } = first.handle_request(&mut e, &req, later, &mut random())
    else {
        panic!()
    };
    list = refresh::claim(&list, &id, later, until).unwrap();
    let Step::Dispatch(_) = first.handle_slot(&mut e, Ok(Slot::Mine), later) else {
        panic!()
    };
    assert_eq!(first.handle_dispatch(Ok(5)), Step::Wait);
    // Another request meanwhile: no second call, the session as it is.
    let mut other = Stream::new(2);
    let step = other.handle_request(&mut e, &req, later, &mut random());
    let mut calls = Vec::new();
    let Step::Forward(f) = drive(
        &mut e,
        &mut other,
        step,
        &mut list,
        later,
        &mut calls,
        &|| panic!("no second token call"),
    ) else {
        panic!()
    };
    assert!(calls.is_empty() && f.set_cookies.is_empty());
    assert_eq!(
        values(&forwarded_of(&req, &cfg, &f), "x-forwarded-access-token"),
        ["at-1"]
    );
}

#[test]
fn a_revoked_grant_means_a_new_login_or_401_never_a_loop() {
    let cfg = refresh_config(json!({}));
    let cookies = login_with(&cfg, json!({}));
    let mut e = loaded(cfg.clone());
    let mut list = Vec::new();
    let mut calls = Vec::new();
    let refused = || {
        ok(
            400,
            br#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#.to_vec(),
        )
    };
    // Within the grace period after it fell due (cookie_refresh, at most 60 s: another replica
    // may have spent the refresh token), a refusal leaves the session working.
    let soon = NOW + 61;
    let mut s = Stream::new(7);
    let req = api(&cookies);
    let step = s.handle_request(&mut e, &req, soon, &mut random());
    let Step::Forward(f) = drive(&mut e, &mut s, step, &mut list, soon, &mut calls, &refused)
    else {
        panic!()
    };
    assert!(f.set_cookies.is_empty());
    assert!(
        f.log.as_deref().unwrap().contains("grace period"),
        "{:?}",
        f.log
    );
    // Past it: a new login.
    let later = NOW + 60 + 60 + refresh::BACKOFF_SECS;
    // A browser: sent to the provider, the session's cookies cleared.
    let browser = with_cookies(get("/app/page"), &cookies);
    let mut s = Stream::new(1);
    let step = s.handle_request(&mut e, &browser, later, &mut random());
    let Step::Reply(r) = drive(&mut e, &mut s, step, &mut list, later, &mut calls, &refused) else {
        panic!()
    };
    assert_eq!(
        (r.status, r.reason.code()),
        (302, "login_redirect"),
        "{r:?}"
    );
    assert!(header(&r, "location")
        .unwrap()
        .starts_with("https://issuer.example.com/authorize?"));
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("_oauth2_proxy=;") && c.contains("Max-Age=0")),
        "{r:?}"
    );
    assert!(
        r.detail.as_deref().unwrap().contains("invalid_grant"),
        "{:?}",
        r.detail
    );
    // An API client with the same cookie, moments later: 401 refresh_refused, no token call.
    let mut s = Stream::new(2);
    let req = api(&cookies);
    let step = s.handle_request(&mut e, &req, later + 1, &mut random());
    let Step::Reply(r) = drive(
        &mut e,
        &mut s,
        step,
        &mut list,
        later + 1,
        &mut calls,
        &refused,
    ) else {
        panic!()
    };
    assert_eq!(
        (r.status, r.reason.code()),
        (401, "refresh_refused"),
        "{r:?}"
    );
    assert_eq!(
        header(&r, "www-authenticate"),
        Some("Cookie realm=\"oidc-filter\"")
    );
    assert_eq!(calls.len(), 2);
}

#[test]
fn a_failing_token_endpoint_leaves_the_session_working_and_backs_off() {
    let cfg = refresh_config(json!({}));
    let cookies = login_with(&cfg, json!({}));
    let mut e = loaded(cfg.clone());
    let later = NOW + 61;
    let mut list = Vec::new();
    let mut calls = Vec::new();
    let req = api(&cookies);
    for (i, answer) in [
        Response::default(),
        ok(503, b"busy".to_vec()),
        ok(200, b"{\"token_type\":\"Bearer\"}".to_vec()),
    ]
    .into_iter()
    .enumerate()
    {
        let now = later + i as u64 * refresh::BACKOFF_SECS;
        let mut s = Stream::new(i as u32);
        let step = s.handle_request(&mut e, &req, now, &mut random());
        let Step::Forward(f) = drive(&mut e, &mut s, step, &mut list, now, &mut calls, &|| {
            answer.clone()
        }) else {
            panic!()
        };
        assert!(f.set_cookies.is_empty());
        assert!(
            f.log.as_deref().unwrap().starts_with("refresh failed"),
            "{:?}",
            f.log
        );
        assert_eq!(
            values(&forwarded_of(&req, &cfg, &f), "x-forwarded-access-token"),
            ["at-1"]
        );
        // Within the back-off: no call.
        let mut s = Stream::new(100 + i as u32);
        let step = s.handle_request(&mut e, &req, now + 1, &mut random());
        let Step::Forward(_) = drive(
            &mut e,
            &mut s,
            step,
            &mut list,
            now + 1,
            &mut calls,
            &|| panic!("backing off"),
        ) else {
            panic!()
        };
    }
    assert_eq!(calls.len(), 3);
}

#[test]
fn a_refreshed_id_token_for_another_user_is_refused() {
    let cfg = refresh_config(json!({}));
    let cookies = login_with(&cfg, json!({}));
    let mut e = loaded(cfg.clone());
    let later = NOW + 61;
    let mut c = refreshed_claims(later);
    c["sub"] = json!("user-2");
    let body = refreshed_body("at-2", None, Some(id_token_with(c)));
    let req = api(&cookies);
    let Step::Forward(f) = refresh_once(&mut e, &req, later, &body) else {
        panic!()
    };
    assert!(f
        .log
        .as_deref()
        .unwrap()
        .contains("sub is not the session's"));
    assert!(f.set_cookies.is_empty());
    assert_eq!(
        values(&forwarded_of(&req, &cfg, &f), "x-forwarded-user"),
        ["user-1"]
    );
}

#[test]
fn refresh_cannot_extend_the_absolute_lifetime() {
    let cfg = refresh_config(json!({"cookie_expire": "10m"}));
    let cookies = login_with(&cfg, json!({}));
    let mut e = loaded(cfg.clone());
    let mut list = Vec::new();
    let mut calls = Vec::new();
    let mut current = cookies;
    let mut n = 0;
    // Refreshed every 61 s; past 10 minutes from the login it is over all the same.
    let mut now = NOW;
    while now < NOW + 600 - 61 {
        now += 61;
        n += 1;
        let body = refreshed_body(&format!("at-{n}"), Some(&format!("rt-{}", n + 1)), None);
        let mut s = Stream::new(n);
        let req = api(&current);
        let step = s.handle_request(&mut e, &req, now, &mut random());
        let Step::Forward(f) = drive(&mut e, &mut s, step, &mut list, now, &mut calls, &|| {
            ok(200, body.clone())
        }) else {
            panic!()
        };
        current = new_cookies(&f);
        assert_eq!(current.len(), 1);
        let max_age: u64 = f.set_cookies[0]
            .split("Max-Age=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            max_age,
            NOW + 600 - now,
            "the cookie lives to the session's end"
        );
    }
    let r: LocalReply =
        match Stream::new(99).handle_request(&mut e, &api(&current), NOW + 600, &mut random()) {
            Step::Reply(r) => r,
            other => panic!("{other:?}"),
        };
    assert_eq!(r.status, 401);
}

#[test]
fn an_idle_session_ends_and_the_mark_is_reissued_sparingly() {
    let cfg = config_with(json!({"session_idle_timeout": "20m"}));
    let cookies = login_with(&cfg, json!({}));
    assert!(cookies[0].1.starts_with("3."), "marks make it format 3");
    let mut e = loaded(cfg.clone());
    let req = api(&cookies);
    // Within a quarter of the timeout: no new cookie.
    for dt in [1, 60, 299] {
        let Step::Forward(f) = Stream::new(1).handle_request(&mut e, &req, NOW + dt, &mut random())
        else {
            panic!()
        };
        assert!(f.set_cookies.is_empty(), "at +{dt}s");
    }
    // Past five minutes: the mark is re-issued, once.
    let Step::Forward(f) = Stream::new(2).handle_request(&mut e, &req, NOW + 301, &mut random())
    else {
        panic!()
    };
    let marked = new_cookies(&f);
    assert_eq!(marked.len(), 1);
    let Step::Forward(f) =
        Stream::new(3).handle_request(&mut e, &api(&marked), NOW + 400, &mut random())
    else {
        panic!()
    };
    assert!(f.set_cookies.is_empty());
    // The old cookie is idle 20 minutes after login; the marked one 20 minutes after +301.
    let Step::Reply(r) = Stream::new(4).handle_request(&mut e, &req, NOW + 1200, &mut random())
    else {
        panic!()
    };
    assert_eq!(r.status, 401);
    assert!(matches!(
        Stream::new(5).handle_request(&mut e, &api(&marked), NOW + 1200, &mut random()),
        Step::Forward(_)
    ));
    let Step::Reply(r) =
        Stream::new(6).handle_request(&mut e, &api(&marked), NOW + 301 + 1200, &mut random())
    else {
        panic!()
    };
    assert_eq!(r.status, 401);
}

#[test]
fn refresh_and_idle_config_errors_are_named() {
    for (cfg, field) in [
        (json!({"cookie_refresh": "200h"}), "cookie_refresh"),
        (json!({"cookie_refresh": "soon"}), "cookie_refresh"),
        (json!({"cookie_refresh": "500ms"}), "cookie_refresh"),
        (json!({"session_idle_timeout": "x"}), "session_idle_timeout"),
    ] {
        let mut v = json!({
            "oidc_issuer_url": ISSUER, "client_id": CLIENT_ID, "client_secret": "s",
            "cookie_secret": SECRET_A, "idp_cluster": "idp",
        });
        for (k, val) in cfg.as_object().unwrap() {
            v[k] = val.clone();
        }
        let errors = Config::parse(v.to_string().as_bytes(), &|_| None).unwrap_err();
        assert!(
            errors.iter().any(|e| e.to_string().contains(field)),
            "{cfg}: {errors:?}"
        );
    }
}

/// A session's refresh at `later` whose ID token has the claims of `refreshed_claims` with
/// `changed` merged in: the reply the request gets, and the engine.
fn refresh_with_claims(
    cfg: &Config,
    cookies: &[(String, String)],
    later: u64,
    changed: Value,
) -> (LocalReply, Engine) {
    let mut e = loaded(cfg.clone());
    let mut c = refreshed_claims(later);
    for (k, v) in changed.as_object().unwrap() {
        c[k] = v.clone();
    }
    let body = refreshed_body("at-2", None, Some(id_token_with(c)));
    let Step::Reply(r) = refresh_once(&mut e, &api(cookies), later, &body) else {
        panic!()
    };
    (r, e)
}

#[test]
fn a_refresh_applies_the_new_groups_at_once() {
    let cfg = refresh_config(json!({"allowed_groups": ["staff"]}));
    let cookies = login_with(&cfg, json!({"groups": ["staff"]}));
    let later = NOW + 61;
    let (r, mut e) = refresh_with_claims(&cfg, &cookies, later, json!({"groups": ["contractors"]}));
    assert_eq!(
        (r.status, r.reason.code()),
        (403, "group_not_allowed"),
        "{r:?}"
    );
    // The refreshed session is set all the same: the next request is refused without a call.
    let fresh: Vec<(String, String)> = set_cookies(&r).iter().map(|c| cookie_pair(c)).collect();
    assert_eq!(fresh.len(), 1);
    let Step::Reply(r) =
        Stream::new(2).handle_request(&mut e, &api(&fresh), later + 1, &mut random())
    else {
        panic!()
    };
    assert_eq!(r.reason.code(), "group_not_allowed");
}

#[test]
fn a_refreshed_id_token_with_an_unverified_email_ends_the_session() {
    let cfg = refresh_config(json!({}));
    let cookies = login_with(&cfg, json!({}));
    let (r, _) = refresh_with_claims(
        &cfg,
        &cookies,
        NOW + 60 + 61,
        json!({"email_verified": false}),
    );
    assert_eq!(
        (r.status, r.reason.code()),
        (401, "refresh_refused"),
        "{r:?}"
    );
    assert!(r.detail.unwrap().contains("not verified"));
}
