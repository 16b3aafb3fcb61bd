//! The Cookie header parser: `http::cookie_pieces`, `parse_cookie_header`, `strip_cookies`,
//! and `Request::cookie` over them.
//!
//! Input: `names \n header`: `names` a comma-separated list of cookie names to drop (no
//! newline: drop `_oauth2_proxy` and every `_oauth2_proxy_csrf_*`, as the filter does), then
//! the Cookie header value as bytes (any bytes: proxies pass obs-text).
//!
//! Invariants: `strip_cookies` keeps every other piece byte for byte and in order, the
//! output re-parses to exactly the kept pieces, so it never holds a dropped name; `None`
//! exactly when nothing was dropped; names and pieces are trimmed and hold no `;`;
//! `parse_cookie_header` yields exactly the pieces with `=` whose name and value are UTF-8,
//! and `Request::cookie` finds the first of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::http::{
    cookie_pieces, parse_cookie_header, strip_cookies, CookiePiece, Request,
};

fn trimmed(b: &[u8]) -> bool {
    !matches!(b.first(), Some(b' ' | b'\t')) && !matches!(b.last(), Some(b' ' | b'\t'))
}

fuzz_target!(|data: &[u8]| {
    let (names, header): (Vec<&[u8]>, &[u8]) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (data[..i].split(|&b| b == b',').collect(), &data[i + 1..]),
        None => (Vec::new(), data),
    };
    let drop = |n: &[u8]| -> bool {
        if names.is_empty() {
            n == b"_oauth2_proxy" || n.starts_with(b"_oauth2_proxy_csrf_")
        } else {
            names.contains(&n)
        }
    };

    let pieces: Vec<CookiePiece<'_>> = cookie_pieces(header).collect();
    for p in &pieces {
        assert!(!p.piece.is_empty());
        assert!(trimmed(p.piece) && trimmed(p.name), "{p:?}");
        assert!(!p.piece.contains(&b';') && !p.name.contains(&b'='), "{p:?}");
        if let Some(v) = p.value {
            assert!(!v.contains(&b';'));
        } else {
            assert_eq!(p.name, p.piece);
        }
    }

    let kept: Vec<&[u8]> = pieces
        .iter()
        .filter(|p| !drop(p.name))
        .map(|p| p.piece)
        .collect();
    let any_dropped = kept.len() != pieces.len();
    match strip_cookies(header, drop) {
        None => assert!(!any_dropped, "a cookie to drop was kept (None)"),
        Some(out) => {
            assert!(any_dropped, "Some without dropping anything");
            assert_eq!(out, kept.join(&b"; "[..]), "kept pieces changed");
            let again: Vec<CookiePiece<'_>> = cookie_pieces(&out).collect();
            assert_eq!(
                again.iter().map(|p| p.piece).collect::<Vec<_>>(),
                kept,
                "the rewritten header parses to other pieces"
            );
            assert!(
                again.iter().all(|p| !drop(p.name)),
                "the rewritten header still holds a dropped cookie: {:?}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(
                strip_cookies(&out, drop),
                None,
                "stripping is not idempotent"
            );
        }
    }

    let Ok(text) = std::str::from_utf8(header) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = parse_cookie_header(text).collect();
    let expected: Vec<(&[u8], &[u8])> = pieces
        .iter()
        .filter_map(|p| Some((p.name, p.value?)))
        .collect();
    assert_eq!(
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect::<Vec<_>>(),
        expected,
        "parse_cookie_header disagrees with cookie_pieces"
    );
    // The request view: several Cookie headers are read in order, names case-sensitive.
    let pairs_raw: Vec<(&[u8], &[u8])> = vec![
        (b":authority", b"app.example.com"),
        (b"cookie", header),
        (b"Cookie", b"late=1"),
    ];
    let req = Request::from_pairs(&pairs_raw);
    if let Some((n, v)) = pairs.first() {
        assert_eq!(req.cookie(n), Some(*v));
    }
    assert_eq!(req.cookies().count(), pairs.len() + 1);
});
