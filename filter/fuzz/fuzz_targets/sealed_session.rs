//! Format-3 sessions (tokens sealed, over chunk cookies) and the shared record of refreshes.
//!
//! Input: byte 0 picks the mode, the rest is the data.
//! - 0: the rest, split at 0xff bytes, is the cookie values (chunk 0 first) as a browser could
//!   send them: mostly refused at parsing, base64url or the tag.
//! - 1: the rest makes a session (tokens of the lengths and bytes it says) that is sealed
//!   here with the filter's own `encode_cookies`, so the reader past the tag is reached; then
//!   one byte of one chunk is changed as the input says.
//! - 2: the rest is a refresh record list (shared data another VM, or version, wrote).
//!
//! Invariants: a sealed session verifies to itself, in every chunk under the browser's limit;
//! any changed byte, dropped chunk or other name is refused; the record list never panics and
//! a claim is seen by the next lookup.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::config::Config;
use oidc_filter_core::refresh::{self, Record, Slot};
use oidc_filter_core::session::{Session, Tokens, MAX_CHUNKS, MAX_COOKIE_VALUE};

const NOW: u64 = 1_800_000_000;
const MAX_AGE: u64 = 7 * 86_400;
const NAME: &str = "_oauth2_proxy";

fn cfg() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        let json = br#"{
            "oidc_issuer_url": "https://issuer.example.com",
            "client_id": "app", "client_secret": "x", "idp_cluster": "idp",
            "cookie_secret": ["q83vEjRWeJCrze8SNFZ4kA==", "BjsqLqI3hVQyzn3bvtp9kg=="],
            "pass_access_token": true
        }"#;
        Config::parse(json, &|_| None).expect("fixed config parses")
    })
}

fn verify(values: &[String], name: &str) -> Option<Session> {
    let c = cfg();
    let first = values.first()?;
    Session::verify_cookies(
        &c.keys,
        &c.providers[0].scope(name),
        first,
        &|i| values.get(i).map(String::as_str),
        NOW,
        MAX_AGE,
    )
    .ok()
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = data.split_at(n.min(data.len()));
    *data = b;
    a
}

fn text(bytes: &[u8]) -> String {
    // Tokens are visible ASCII (see `oidc::other_tokens`).
    bytes.iter().map(|b| char::from(0x21 + b % 94)).collect()
}

fuzz_target!(|input: &[u8]| {
    let Some((&m, mut data)) = input.split_first() else {
        return;
    };
    match m % 3 {
        0 => {
            let values: Vec<String> = data
                .split(|b| *b == 0xff)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            if let Some(s) = verify(&values, NAME) {
                // Accepted: it must be one we would mint, byte for byte.
                let again = s
                    .encode_cookies(&cfg().keys[0], &cfg().providers[0].scope(NAME))
                    .expect("an accepted session encodes");
                assert_eq!(verify(&again, NAME), Some(s));
            }
        }
        1 => {
            let head = take(&mut data, 6);
            let len = |i: usize| usize::from(head.get(i).copied().unwrap_or(0)) * 48;
            let id = text(take(&mut data, len(0)));
            let at = text(take(&mut data, len(1)));
            let rt = text(take(&mut data, len(2)));
            let s = Session {
                expires_at: NOW + 3600,
                issued_at: NOW - 60,
                claims: ["u1".into(), "alice@example.com".into(), "alice".into()],
                groups: vec![],
                attrs: vec![],
                tokens: Some(Tokens {
                    id_token: id,
                    access_token: at,
                    refresh_token: rt,
                    access_expires_at: NOW + 300,
                    refreshed_at: NOW - 60,
                    seen_at: NOW - 1,
                }),
            };
            let c = cfg();
            let Some(values) = s.encode_cookies(&c.keys[0], &c.providers[0].scope(NAME)) else {
                return;
            };
            assert!(values.len() <= MAX_CHUNKS);
            assert!(values.iter().all(|v| v.len() <= MAX_COOKIE_VALUE));
            assert_eq!(verify(&values, NAME).as_ref(), Some(&s));
            assert_eq!(verify(&values, "other"), None);
            if values.len() > 1 {
                assert_eq!(verify(&values[..values.len() - 1], NAME), None);
            }
            // One changed byte anywhere: refused (or, for a base64 spelling that decodes to
            // the same bytes, the same session).
            let which = usize::from(head.get(3).copied().unwrap_or(0)) % values.len();
            let at = (usize::from(head.get(4).copied().unwrap_or(0)) << 4
                | usize::from(head.get(5).copied().unwrap_or(0)))
                % values[which].len().max(1);
            let mut changed = values.clone();
            let mut b = changed[which].clone().into_bytes();
            if let Some(x) = b.get_mut(at) {
                *x = if *x == b'A' { b'B' } else { b'A' };
            }
            changed[which] = String::from_utf8_lossy(&b).into_owned();
            if changed != values {
                assert!(
                    matches!(verify(&changed, NAME), None) || verify(&changed, NAME) == Some(s)
                );
            }
        }
        _ => {
            let list = data;
            let id = "rec-id";
            match refresh::claim(list, id, NOW, NOW + 10) {
                Ok(next) => {
                    assert_eq!(
                        refresh::claim(&next, id, NOW + 1, NOW + 11),
                        Err(Slot::InFlight)
                    );
                    let done = Record::Done(vec!["3.1.x".into()]);
                    let after = refresh::publish(&next, id, &done, NOW + 2);
                    assert_eq!(
                        refresh::claim(&after, id, NOW + 3, NOW + 13),
                        Err(Slot::Done(vec!["3.1.x".into()]))
                    );
                }
                Err(_) => {
                    // A live record of that id in the input: publishing over it works too.
                    let after = refresh::publish(list, id, &Record::Failed, NOW);
                    assert_eq!(
                        refresh::claim(&after, id, NOW + 1, NOW + 9),
                        Err(Slot::Failed)
                    );
                }
            }
        }
    }
});
