//! The login: redirect to the provider, 401 for API clients, callback, token request,
//! session cookie, and the requests after it.
mod common;

use common::*;
use host_tests::{Outcome, Request};
use serde_json::json;

#[test]
fn unauthenticated_browser_is_redirected_with_state_nonce_and_pkce() {
    let mut host = ready_host(json!({}));
    let login = begin_login(&mut host, browser("/app?x=1"));
    assert_eq!(
        login.redirect_uri,
        "https://app.example.com/oauth2/callback"
    );
    // Each login gets its own state, nonce and challenge.
    let again = begin_login(&mut host, browser("/app?x=1"));
    assert_ne!(login.state, again.state);
    assert_ne!(login.nonce, again.nonce);
    assert_ne!(login.code_challenge, again.code_challenge);
    assert_ne!(
        login.flow_cookie.name, again.flow_cookie.name,
        "one flow cookie per login"
    );
    // The state, nonce and verifier never appear in the flow cookie in clear.
    assert!(!login.flow_cookie.value.contains(&login.nonce));
}

#[test]
fn head_and_plain_get_are_navigations_too() {
    let mut host = ready_host(json!({}));
    let r = host.request(Request::get("/app")).expect_reply();
    assert_eq!(
        r.status, 302,
        "a bare GET (curl, old browser) is a navigation: {r:#?}"
    );
    let r = host.request(Request::new("HEAD", "/app")).expect_reply();
    assert_eq!(r.status, 302);
}

#[test]
fn api_clients_get_401() {
    let mut host = ready_host(json!({}));
    let cases = [
        Request::get("/api").header("accept", "application/json"),
        Request::get("/api").header("x-requested-with", "XMLHttpRequest"),
        Request::get("/api").header("sec-fetch-mode", "cors"),
        Request::post("/api")
            .header("accept", "text/html")
            .body("a=1"),
        Request::new("DELETE", "/api/1"),
    ];
    for req in cases {
        let shown = format!("{} {:?}", req.method, req.headers);
        let r = assert_reply(host.request(req), 401, "unauthenticated");
        assert!(r.header("www-authenticate").is_some(), "{shown}: {r:#?}");
        assert!(
            r.header("set-cookie").is_none(),
            "no login cookie for an API client: {shown}"
        );
    }
    assert!(host.pending_callouts().is_empty());
}

#[test]
fn full_login_sets_the_session_and_returns_to_the_original_url() {
    let mut host = ready_host(json!({}));
    let (login, out) = login_with_response(&mut host, "/app/page?q=1", 200, |l, now| {
        good_token(now, &l.nonce)
    });
    let r = out.expect_reply();
    assert_eq!(r.status, 302, "{r:#?}");
    assert_eq!(r.header("location"), Some("/app/page?q=1"));
    let cookies = set_cookies(&r.headers);
    let session = cookies
        .iter()
        .find(|c| c.name == COOKIE)
        .expect("session cookie");
    assert!(
        session.value.starts_with("2."),
        "versioned: {}",
        session.value
    );
    assert_eq!(session.attr("Path"), Some("/"));
    assert_eq!(session.attr("Max-Age"), Some("604800"), "168h");
    assert!(session.has("HttpOnly") && session.has("Secure"));
    assert_eq!(session.attr("SameSite"), Some("Lax"));
    assert_eq!(session.attr("Domain"), None);
    let flow = cookies
        .iter()
        .find(|c| c.name == login.flow_cookie.name)
        .expect("flow cookie cleared");
    assert_eq!(flow.attr("Max-Age"), Some("0"));
    assert_eq!(flow.attr("Path"), Some("/"));
    // No token in the cookie.
    assert!(
        !session.value.contains("eyJ"),
        "the ID token is not stored in the cookie"
    );

    // The next request goes upstream with the identity and without our cookie.
    let h = host
        .request(
            browser("/app/page")
                .cookie("theme", "dark")
                .cookie(COOKIE, &session.value),
        )
        .expect_continued();
    assert_eq!(h.get("x-forwarded-user"), Some("user-123"));
    assert_eq!(h.get("x-forwarded-email"), Some("alice@example.com"));
    assert_eq!(h.get("x-forwarded-preferred-username"), Some("alice"));
    assert_eq!(
        h.get("cookie"),
        Some("theme=dark"),
        "our cookie removed, others kept"
    );
    assert_eq!(
        h.get("x-auth-request-user"),
        None,
        "set_xauthrequest is off by default"
    );
    assert_eq!(h.get(":path"), Some("/app/page"));
    // An API request with the session continues too.
    let h = host
        .request(
            Request::get("/api")
                .header("accept", "application/json")
                .cookie(COOKIE, &session.value),
        )
        .expect_continued();
    assert_eq!(h.get("x-forwarded-user"), Some("user-123"));
    assert_eq!(
        h.get("cookie"),
        None,
        "the cookie header goes when only ours was in it"
    );
}

#[test]
fn set_xauthrequest_and_pass_user_headers() {
    let mut host = ready_host(json!({"set_xauthrequest": true, "pass_user_headers": false}));
    let (_, cookie) = login(&mut host);
    let h = host
        .request(browser("/").cookie(COOKIE, &cookie))
        .expect_continued();
    assert_eq!(h.get("x-auth-request-user"), Some("user-123"));
    assert_eq!(h.get("x-auth-request-email"), Some("alice@example.com"));
    assert_eq!(h.get("x-auth-request-preferred-username"), Some("alice"));
    assert_eq!(h.get("x-forwarded-user"), None);
}

#[test]
fn cookie_attributes_follow_the_config() {
    let mut host = ready_host(json!({
        "cookie_name": "sess", "cookie_domains": [".example.com"], "cookie_samesite": "strict",
        "cookie_secure": false, "cookie_expire": "1h30m",
    }));
    let r = host.request(browser("/")).expect_reply();
    let flow = &set_cookies(&r.headers)[0];
    assert!(flow.name.starts_with("sess_csrf_"), "{flow:?}");
    assert!(!flow.has("Secure"));
    assert_eq!(
        flow.attr("SameSite"),
        Some("Lax"),
        "a Strict flow cookie would not come back from the IdP"
    );
    let location = url::Url::parse(r.header("location").unwrap()).unwrap();
    let state = query(&location, "state").unwrap();
    let nonce = query(&location, "nonce").unwrap();
    let req = Request::get(&format!("/oauth2/callback?code=c&state={state}"))
        .scheme("https")
        .cookie(&flow.name, &flow.value);
    let c = host.request(req).expect_paused();
    let now = host.now_secs();
    let r = host
        .respond(c[0].token, 200, &[], good_token(now, &nonce))
        .expect_reply();
    let s = set_cookies(&r.headers)
        .into_iter()
        .find(|c| c.name == "sess")
        .expect("session");
    assert_eq!(s.attr("Domain"), Some(".example.com"));
    assert_eq!(s.attr("SameSite"), Some("Strict"));
    assert_eq!(s.attr("Max-Age"), Some("5400"));
    assert!(!s.has("Secure"));
}

#[test]
fn start_endpoint_and_sign_out() {
    let mut host = ready_host(json!({}));
    let r = host
        .request(browser("/oauth2/start?rd=%2Fdashboard"))
        .expect_reply();
    assert_eq!(r.status, 302);
    let (_, out) =
        login_with_response(&mut host, "/oauth2/start?rd=%2Fdashboard", 200, |l, now| {
            good_token(now, &l.nonce)
        });
    let r = out.expect_reply();
    assert_eq!(r.header("location"), Some("/dashboard"));
    let cookie = set_cookies(&r.headers)
        .into_iter()
        .find(|c| c.name == COOKIE)
        .unwrap();

    let r = host
        .request(browser("/oauth2/sign_out?rd=%2Fbye").cookie(COOKIE, &cookie.value))
        .expect_reply();
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/bye"));
    let cleared = set_cookies(&r.headers)
        .into_iter()
        .find(|c| c.name == COOKIE)
        .expect("cleared");
    assert_eq!(cleared.value, "");
    assert_eq!(cleared.attr("Max-Age"), Some("0"));
    assert_eq!(cleared.attr("Path"), Some("/"));
    assert!(cleared.has("HttpOnly") && cleared.has("Secure"));
    // Without rd: to /.
    let r = host.request(browser("/oauth2/sign_out")).expect_reply();
    assert_eq!(r.header("location"), Some("/"));
}

#[test]
fn http_scheme_and_port_shape_the_redirect_uri() {
    let mut host = ready_host(json!({"cookie_secure": false}));
    let login = begin_login_insecure(
        &mut host,
        browser("/").scheme("http").authority("localhost:8080"),
    );
    assert_eq!(login, "http://localhost:8080/oauth2/callback");
}

fn begin_login_insecure(host: &mut host_tests::Host, req: Request) -> String {
    let r = host.request(req).expect_reply();
    assert_eq!(r.status, 302, "{r:#?}");
    let location = url::Url::parse(r.header("location").unwrap()).unwrap();
    query(&location, "redirect_uri").unwrap()
}

#[test]
fn absolute_redirect_url_and_post_auth() {
    let mut host = ready_host(json!({
        "redirect_url": "https://auth.example.com/cb",
        "token_endpoint_auth_method": "client_secret_post",
    }));
    let r = host.request(browser("/")).expect_reply();
    let location = url::Url::parse(r.header("location").unwrap()).unwrap();
    assert_eq!(
        query(&location, "redirect_uri").as_deref(),
        Some("https://auth.example.com/cb")
    );
    let flow = &set_cookies(&r.headers)[0];
    // Login cookies live on Path=/ (a `__Host-` one must; the next login start sees them).
    assert_eq!(flow.attr("Path"), Some("/"));
    let state = query(&location, "state").unwrap();
    let c = host
        .request(
            Request::get(&format!("/cb?code=abc&state={state}"))
                .authority("auth.example.com")
                .cookie(&flow.name, &flow.value),
        )
        .expect_paused();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].header("authorization"), None);
    let body = c[0].body_str();
    assert!(body.contains("client_id=app"), "{body}");
    assert!(body.contains("client_secret=s3cr%3At%26"), "{body}");
    assert!(
        body.contains("redirect_uri=https%3A%2F%2Fauth.example.com%2Fcb"),
        "{body}"
    );
}

#[test]
fn auth_endpoint_answers_202_or_401() {
    let mut host = ready_host(json!({}));
    let (_, cookie) = login(&mut host);
    let o = host.request(Request::get("/oauth2/auth").cookie(COOKIE, &cookie));
    match o {
        Outcome::Replied {
            status: 202,
            headers,
            ..
        } => {
            assert_eq!(headers.get("x-auth-request-user"), Some("user-123"));
        }
        other => panic!("{other:#?}"),
    }
    assert_eq!(
        host.request(Request::get("/oauth2/auth")).status(),
        Some(401)
    );
}
