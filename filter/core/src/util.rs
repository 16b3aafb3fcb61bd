//! Small helpers shared by the core: base64url, constant-time comparison, durations,
//! and the keyed MAC state precomputed at configure time.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub type HmacSha256 = Hmac<Sha256>;

/// base64url without padding (RFC 4648 §5), the encoding of every cookie and PKCE value.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `url` with `pairs` added to its query, encoded as `application/x-www-form-urlencoded`
/// (the WHATWG URL standard's serializer), as `Url::query_pairs_mut` would write it: one
/// string written once, where that re-splits and re-serialises the URL.
pub fn with_query_pairs(url: &url::Url, pairs: &[(&str, &str)]) -> String {
    let head = &url[..url::Position::AfterQuery];
    let fragment = url.as_str().get(head.len()..).unwrap_or_default();
    // Bytes, checked as UTF-8 once at the end: what is added is ASCII or `&str` slices.
    let mut out = Vec::with_capacity(
        url.as_str().len()
            + pairs
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>()
            + 64,
    );
    out.extend_from_slice(head.as_bytes());
    let mut sep: &[u8] = match url.query() {
        None => {
            out.push(b'?');
            b""
        }
        Some("") => b"",
        Some(_) => b"&",
    };
    for (k, v) in pairs {
        out.extend_from_slice(sep);
        push_form_encoded(&mut out, k.as_bytes());
        out.push(b'=');
        push_form_encoded(&mut out, v.as_bytes());
        sep = b"&";
    }
    out.extend_from_slice(fragment.as_bytes());
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `application/x-www-form-urlencoded` byte serialisation: ASCII letters, digits and `*-._`
/// as they are, space as `+`, every other byte `%XX`.
fn push_form_encoded(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut rest = bytes;
    while let Some(i) = rest.iter().position(|&b| !FORM_PLAIN[usize::from(b)]) {
        let (plain, tail) = rest.split_at(i);
        out.extend_from_slice(plain);
        let Some((&b, tail)) = tail.split_first() else {
            break;
        };
        if b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        rest = tail;
    }
    out.extend_from_slice(rest);
}

/// The bytes `application/x-www-form-urlencoded` keeps as they are.
static FORM_PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_');
        i += 1;
    }
    t
};

/// `bytes` in base64url without padding, appended to `out`.
pub fn push_b64url(out: &mut String, bytes: &[u8]) {
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

/// `n` in decimal, appended to `out` (what `write!(out, "{n}")` does, without the formatter).
pub fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
        start -= 1;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(digits.get(start..).unwrap_or_default()).unwrap_or("0"));
}

pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

pub fn b64_std(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes base64 in any of the four common spellings (standard or URL-safe, padded or not).
pub fn b64_any_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE
        .decode(s)
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .or_else(|_| STANDARD.decode(s))
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .ok()
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // Eight bytes at a time: sealed sessions compare 20 KB of cookie values.
    let mut diff = 0u64;
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in wa.remainder().iter().zip(wb.remainder()) {
        diff |= u64::from(x ^ y);
    }
    for (x, y) in wa.zip(wb) {
        let mut u = [0u8; 8];
        let mut v = [0u8; 8];
        u.copy_from_slice(x);
        v.copy_from_slice(y);
        diff |= u64::from_ne_bytes(u) ^ u64::from_ne_bytes(v);
    }
    // Keep the optimiser from turning the loop into an early exit.
    core::hint::black_box(diff) == 0
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finalize().into()
}

/// A keyed HMAC-SHA256 whose key schedule is computed once; `mac` clones the state.
#[derive(Clone)]
pub struct MacKey(HmacSha256);

impl MacKey {
    pub fn new(key: &[u8]) -> Option<Self> {
        HmacSha256::new_from_slice(key).ok().map(MacKey)
    }

    /// HMAC over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = self.0.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }
}

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

/// Parses a Go-style duration as oauth2-proxy takes it: `90s`, `30m`, `1h30m`, `168h`, `500ms`.
/// Returns milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(0);
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return None;
        }
        let n: u64 = s.get(start..i)?.parse().ok()?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor = match s.get(ustart..i)? {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(factor)?)?;
    }
    Some(total)
}

/// Appends `value` with a big-endian u16 length prefix; fails on values over 65535 bytes.
pub fn put_lp(out: &mut Vec<u8>, value: &[u8]) -> Option<()> {
    let len = u16::try_from(value.len()).ok()?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Some(())
}

/// The position of the first `needle` in `hay`, eight bytes per step: the bytes equal to
/// `needle` become zero bytes, and the lowest zero byte of a word is found exactly by
/// `(x - 0x01..) & !x & 0x80..` (a borrow only reaches bytes above a zero one). Wasm has
/// 64-bit integer operations, so this is about a sixth of a byte-by-byte loop's work on the
/// long values it is used for (Cookie headers).
pub fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO.wrapping_mul(u64::from(needle));
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b) ^ pattern;
        let zero = x.wrapping_sub(LO) & !x & HI;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = words.remainder();
    rest.iter().position(|&b| b == needle).map(|i| at + i)
}

/// A cursor over length-prefixed binary data; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.buf.split_first_chunk::<8>()?;
        self.buf = rest;
        Some(u64::from_be_bytes(*head))
    }

    pub fn lp(&mut self) -> Option<&'a [u8]> {
        let (head, rest) = self.buf.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*head));
        if rest.len() < len {
            return None;
        }
        let (value, rest) = rest.split_at(len);
        self.buf = rest;
        Some(value)
    }

    pub fn lp_str(&mut self) -> Option<&'a str> {
        core::str::from_utf8(self.lp()?).ok()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_as_display_writes_it() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            300,
            86_400,
            1_234_567_890,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut s = String::from("x=");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x={n}"));
        }
    }

    #[test]
    fn query_pairs_are_written_as_url_writes_them() {
        let pairs = [
            ("response_type", "code"),
            (
                "redirect_uri",
                "https://app.example.com:8443/oauth2/callback?x=1&y=a b",
            ),
            ("scope", "openid email profile"),
            ("state", "Zm9v-YmFy_YmF6"),
            ("odd key=&+%", "*-._~!'()/?#[]@,;:$\\"),
            ("unicode", "äö€\u{1F600}\u{7f}\u{0}"),
            ("", ""),
        ];
        for base in [
            "https://idp.example.com/authorize",
            "https://idp.example.com/authorize?",
            "https://idp.example.com/authorize?tenant=a%20b&x",
            "https://idp.example.com/authorize#frag",
            "https://idp.example.com:8443/a/b/?c=d#e",
        ] {
            let u = url::Url::parse(base).unwrap();
            let mut want = u.clone();
            want.query_pairs_mut().extend_pairs(pairs);
            assert_eq!(with_query_pairs(&u, &pairs), want.as_str(), "{base}");
            let mut none = u.clone();
            none.query_pairs_mut();
            assert_eq!(with_query_pairs(&u, &[]), none.as_str(), "{base}");
        }
    }

    #[test]
    fn find_byte_agrees_with_a_plain_search() {
        use rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // Every length to 40 and every position of the needle, over bytes that stress the
        // zero-byte trick (0x00, 0x01, 0x80, 0xff and the needle's neighbours), then random.
        let tricky = [0x00u8, 0x01, 0x3a, 0x3c, 0x7f, 0x80, 0xbb, 0xff];
        for len in 0..40 {
            for pos in 0..=len {
                for &fill in &tricky {
                    let mut hay = vec![fill; len];
                    if pos < len {
                        hay[pos] = b';';
                    }
                    let want = hay.iter().position(|&b| b == b';');
                    assert_eq!(find_byte(&hay, b';'), want, "{hay:?}");
                }
            }
        }
        for _ in 0..20_000 {
            let len = (rng.next_u32() % 64) as usize;
            let mut hay = vec![0u8; len];
            rng.fill_bytes(&mut hay);
            let needle = tricky[(rng.next_u32() % 8) as usize];
            let want = hay.iter().position(|&b| b == needle);
            assert_eq!(find_byte(&hay, needle), want, "{hay:?} {needle}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("168h"), Some(168 * 3_600_000));
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("0"), Some(0));
        assert_eq!(parse_duration_ms(""), None);
        assert_eq!(parse_duration_ms("10"), None);
        assert_eq!(parse_duration_ms("h"), None);
        assert_eq!(parse_duration_ms("5y"), None);
        assert_eq!(parse_duration_ms("-5s"), None);
        assert_eq!(parse_duration_ms("99999999999999999999h"), None);
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
        // Longer than a word, and not a multiple of one: every byte counts.
        let a: Vec<u8> = (0..1003u32).map(|i| (i % 251) as u8).collect();
        assert!(ct_eq(&a, &a.clone()));
        for at in [0, 7, 8, 500, 999, 1000, 1002] {
            let mut b = a.clone();
            b[at] ^= 0x20;
            assert!(!ct_eq(&a, &b), "differs at {at}");
        }
    }

    #[test]
    fn base64_spellings() {
        let raw = [0xfbu8, 0xff, 0x01, 0x02, 0x03];
        for s in ["-_8BAgM=", "-_8BAgM", "+/8BAgM=", "+/8BAgM"] {
            assert_eq!(b64_any_decode(s).as_deref(), Some(&raw[..]), "{s}");
        }
        assert_eq!(b64_any_decode("not base64!"), None);
    }

    #[test]
    fn reader_rejects_truncation() {
        let mut out = Vec::new();
        out.extend_from_slice(&7u64.to_be_bytes());
        put_lp(&mut out, b"hello").unwrap();
        let mut r = Reader::new(&out);
        assert_eq!(r.u64(), Some(7));
        assert_eq!(r.lp(), Some(&b"hello"[..]));
        assert!(r.is_empty());
        let mut r = Reader::new(&out[..out.len() - 1]);
        assert_eq!(r.u64(), Some(7));
        assert_eq!(r.lp(), None);
    }
}
