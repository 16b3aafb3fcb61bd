//! The engine and the per-request state machine, driven as the glue drives them: fetches
//! polled, sent and answered; a login's claim, dispatch and callout; logins waiting for a key
//! refetch answered by the engine, one fetch for all of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use oidc_filter_core::engine::{Engine, Response, Step, Stream, MAX_KEY_WAITERS};
use oidc_filter_core::http::Request;
use oidc_filter_core::idp::{FetchKind, KEY_WAIT_SECS};
use rand_core::RngCore;
use serde_json::json;

fn discovery() -> Vec<u8> {
    json!({
        "issuer": ISSUER,
        "authorization_endpoint": "https://issuer.example.com/authorize",
        "token_endpoint": "https://issuer.example.com/oauth/token",
        "jwks_uri": "https://keys.example.net/jwks.json",
    })
    .to_string()
    .into_bytes()
}

fn jwks_body(keys: &[serde_json::Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

fn ok(body: Vec<u8>) -> Response {
    Response {
        status: Some(200),
        body,
        too_large: false,
    }
}

/// Sends every fetch due (tokens from `next`) and answers each with `answer`.
fn pump(e: &mut Engine, now: u64, next: &mut u32, answer: &dyn Fn(FetchKind) -> Response) -> usize {
    let mut log = Vec::new();
    let mut n = 0;
    loop {
        let due = e.poll_fetches(now, &mut log);
        if due.is_empty() {
            return n;
        }
        for f in due {
            *next += 1;
            e.fetch_sent(&f, Ok(*next), now, &mut log);
            assert!(e.handle_fetch_response(*next, &answer(f.kind), now, &mut log));
            n += 1;
        }
    }
}

fn loaded(keys: &[serde_json::Value]) -> (Engine, u32) {
    let mut e = Engine::new(config());
    let mut token = 0;
    let keys = keys.to_vec();
    let n = pump(&mut e, NOW, &mut token, &|k| match k {
        FetchKind::Discovery => ok(discovery()),
        FetchKind::Jwks => ok(jwks_body(&keys)),
    });
    assert_eq!(n, 2, "discovery, then keys");
    assert!(e.idp(0).unwrap().ready());
    (e, token)
}

fn random() -> impl FnMut() -> Option<[u8; 32]> {
    let mut r = rng(9);
    move || {
        let mut b = [0u8; 32];
        r.fill_bytes(&mut b);
        Some(b)
    }
}

/// A login's callback driven to `Step::Wait` (token request sent as `token`); the nonce.
fn to_token_wait(e: &mut Engine, s: &mut Stream, token: u32) -> String {
    let mut rand = random();
    let Step::Reply(start) = Stream::new(0).handle_request(e, &get("/app"), NOW, &mut rand) else {
        panic!("no redirect");
    };
    let auth = header(&start, "location").unwrap().to_string();
    let flow = cookie_pair(set_cookies(&start).last().unwrap());
    let cb: Request = callback_request(&auth, &flow);
    let Step::Claim(claim) = s.handle_request(e, &cb, NOW, &mut rand) else {
        panic!("no claim");
    };
    assert_eq!(claim.id, flow.0);
    let Step::Dispatch(callout) = s.handle_claim(Ok(true)) else {
        panic!("no dispatch");
    };
    assert_eq!(callout.cluster, "idp");
    assert!(s.holds());
    assert_eq!(s.handle_dispatch(Ok(token)), Step::Wait);
    param(&query(&auth), "nonce")
}

#[test]
fn a_login_through_the_state_machine() {
    let (mut e, _) = loaded(&[rsa_jwk(rsa_key(0))]);
    let mut s = Stream::new(1);
    let nonce = to_token_wait(&mut e, &mut s, 77);
    // Another callout's answer is not this stream's.
    assert_eq!(s.handle_callout(&mut e, 78, ok(vec![]), NOW), None);
    let Some(Step::Reply(r)) = s.handle_callout(&mut e, 77, ok(token_body(&id_token(&nonce))), NOW)
    else {
        panic!("no reply");
    };
    assert_eq!((r.status, r.reason.code()), (302, "login_complete"));
    assert!(s.holds(), "answered: body data must not resume it");
    // The state was consumed: the same answer again finds nothing to do.
    assert_eq!(s.handle_callout(&mut e, 77, ok(vec![]), NOW), None);
}

#[test]
fn a_spent_login_and_a_failed_dispatch_end_the_stream() {
    let (mut e, _) = loaded(&[rsa_jwk(rsa_key(0))]);
    let mut rand = random();
    let Step::Reply(start) = Stream::new(0).handle_request(&mut e, &get("/app"), NOW, &mut rand)
    else {
        panic!()
    };
    let auth = header(&start, "location").unwrap().to_string();
    let flow = cookie_pair(set_cookies(&start).last().unwrap());
    let cb = callback_request(&auth, &flow);

    let mut s = Stream::new(1);
    assert!(matches!(
        s.handle_request(&mut e, &cb, NOW, &mut rand),
        Step::Claim(_)
    ));
    let Step::Reply(r) = s.handle_claim(Ok(false)) else {
        panic!()
    };
    assert_eq!(r.reason.code(), "callback_replayed");

    let mut s = Stream::new(2);
    assert!(matches!(
        s.handle_request(&mut e, &cb, NOW, &mut rand),
        Step::Claim(_)
    ));
    let Step::Reply(r) = s.handle_claim(Err(())) else {
        panic!()
    };
    assert_eq!(
        (r.status, r.reason.code()),
        (503, "shared_data_unavailable")
    );

    let mut s = Stream::new(3);
    assert!(matches!(
        s.handle_request(&mut e, &cb, NOW, &mut rand),
        Step::Claim(_)
    ));
    assert!(matches!(s.handle_claim(Ok(true)), Step::Dispatch(_)));
    let Step::Reply(r) = s.handle_dispatch(Err("no cluster".into())) else {
        panic!()
    };
    assert_eq!((r.status, r.reason.code()), (502, "token_request_failed"));

    // Out of order: a claim answer with no claim asked is an internal error, not a panic.
    let Step::Reply(r) = Stream::new(4).handle_claim(Ok(true)) else {
        panic!()
    };
    assert_eq!(r.reason.code(), "internal_error");
}

#[test]
fn a_token_response_too_large_is_refused() {
    let (mut e, _) = loaded(&[rsa_jwk(rsa_key(0))]);
    let mut s = Stream::new(1);
    to_token_wait(&mut e, &mut s, 5);
    let big = Response {
        status: Some(200),
        body: vec![],
        too_large: true,
    };
    let Some(Step::Reply(r)) = s.handle_callout(&mut e, 5, big, NOW) else {
        panic!()
    };
    assert_eq!((r.status, r.reason.code()), (502, "token_response_invalid"));
}

/// Keys rotate: the provider signs with a key the engine has not fetched yet. Every login
/// waiting for it is answered after one JWKS refetch.
#[test]
fn logins_waiting_for_a_new_key_share_one_refetch() {
    let (mut e, mut token) = loaded(&[rsa_jwk(rsa_key(0))]);
    let new_key = rsa_key(1);
    let mut streams = Vec::new();
    for i in 0..3u32 {
        let mut s = Stream::new(10 + i);
        let nonce = to_token_wait(&mut e, &mut s, 100 + i);
        let t = sign_rs256(
            new_key,
            &json!({"alg": "RS256", "kid": new_key.kid}),
            &claims(&nonce),
        );
        assert_eq!(
            s.handle_callout(&mut e, 100 + i, ok(token_body(&t)), NOW),
            Some(Step::Wait)
        );
        assert!(s.holds());
        streams.push(s);
    }
    assert_eq!(e.waiting(), 3);
    assert!(
        e.poll_answers(NOW).is_empty(),
        "nobody is answered before the keys come"
    );
    // One refetch, answered with the rotated set.
    let fetches = pump(&mut e, NOW + 1, &mut token, &|k| {
        assert_eq!(k, FetchKind::Jwks);
        ok(jwks_body(&[rsa_jwk(rsa_key(0)), rsa_jwk(rsa_key(1))]))
    });
    assert_eq!(fetches, 1);
    let answers = e.poll_answers(NOW + 1);
    let mut ids: Vec<u32> = answers.iter().map(|a| a.stream).collect();
    ids.sort();
    assert_eq!(ids, [10, 11, 12]);
    for a in &answers {
        assert_eq!((a.reply.reason.code(), a.provider), ("login_complete", 0));
    }
    assert_eq!(e.waiting(), 0);
}

#[test]
fn a_key_that_never_comes_times_out_and_a_left_client_is_forgotten() {
    let (mut e, _) = loaded(&[rsa_jwk(rsa_key(0))]);
    let stranger = rsa_key(1);
    let mut a = Stream::new(1);
    let mut b = Stream::new(2);
    for (s, tok) in [(&mut a, 1u32), (&mut b, 2)] {
        let nonce = to_token_wait(&mut e, s, tok);
        let t = sign_rs256(
            stranger,
            &json!({"alg": "RS256", "kid": stranger.kid}),
            &claims(&nonce),
        );
        assert_eq!(
            s.handle_callout(&mut e, tok, ok(token_body(&t)), NOW),
            Some(Step::Wait)
        );
    }
    // b's client leaves.
    b.handle_done(&mut e);
    assert_eq!(e.waiting(), 1);
    assert!(e.poll_answers(NOW + KEY_WAIT_SECS - 1).is_empty());
    let answers = e.poll_answers(NOW + KEY_WAIT_SECS);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].stream, 1);
    assert_eq!(
        (answers[0].reply.status, answers[0].reply.reason.code()),
        (502, "id_token_invalid")
    );
}

#[test]
fn key_waiters_are_bounded() {
    let (mut e, _) = loaded(&[rsa_jwk(rsa_key(0))]);
    let stranger = rsa_key(1);
    let mut last = None;
    for i in 0..=MAX_KEY_WAITERS as u32 {
        let mut s = Stream::new(i);
        let nonce = to_token_wait(&mut e, &mut s, i);
        let t = sign_rs256(
            stranger,
            &json!({"alg": "RS256", "kid": stranger.kid}),
            &claims(&nonce),
        );
        last = s.handle_callout(&mut e, i, ok(token_body(&t)), NOW);
    }
    assert_eq!(e.waiting(), MAX_KEY_WAITERS);
    let Some(Step::Reply(r)) = last else {
        panic!("{last:?}")
    };
    assert_eq!((r.status, r.reason.code()), (503, "idp_busy"));
    assert!(r.headers.iter().any(|(k, _)| k == "retry-after"));
}
