//! Header maps in the proxy-wasm wire form: the request's read in place, a local reply's
//! written.
//!
//! The form (the ABI's `proxy_get_header_map_pairs`, `proxy_send_local_response`): a u32
//! pair count, then a u32 name length and a u32 value length per pair, then each name and
//! each value followed by a NUL byte; integers little-endian. Names and values are bytes:
//! proxies pass header values that are not UTF-8 (obs-text), and reading one must not fail.

/// The pairs of a serialized map, borrowed from it; `None` if the buffer is malformed.
pub fn parse(buf: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if buf.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(buf, 0)? as usize;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    if data > buf.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        let klen = u32_at(buf, 4 + 8 * i)? as usize;
        let vlen = u32_at(buf, 8 + 8 * i)? as usize;
        let k = take(buf, &mut data, klen)?;
        let v = take(buf, &mut data, vlen)?;
        pairs.push((k, v));
    }
    Some(pairs)
}

/// Serializes `pairs`; `None` if a name or value is too long for the form.
pub fn serialize<'a, V: AsRef<[u8]> + 'a>(pairs: &[(&'a [u8], V)]) -> Option<Vec<u8>> {
    let mut size = 4 + 8 * pairs.len();
    for (k, v) in pairs {
        size += k.len() + v.as_ref().len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32::try_from(pairs.len()).ok()?.to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&u32::try_from(k.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.as_ref().len()).ok()?.to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    Some(out)
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// `len` bytes at `*at`, which must be followed by a NUL; moves `*at` past the NUL.
fn take<'a>(buf: &'a [u8], at: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(len)?;
    let s = buf.get(*at..end)?;
    if buf.get(end) != Some(&0) {
        return None;
    }
    *at = end + 1;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_any_bytes() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/x"),
            (b"x-note", b"caf\xe9 \xff"),
            (b"empty", b""),
            (b"cookie", b"a=1"),
        ];
        let buf = serialize(&pairs).unwrap();
        assert_eq!(&buf[..4], &4u32.to_le_bytes());
        assert_eq!(parse(&buf).unwrap(), pairs);
        assert_eq!(parse(&[]).unwrap(), Vec::<(&[u8], &[u8])>::new());
        assert_eq!(parse(&serialize::<&[u8]>(&[]).unwrap()).unwrap().len(), 0);
    }

    #[test]
    fn malformed_buffers_are_refused_not_trusted() {
        let good = serialize(&[(&b"ab"[..], &b"cd"[..])]).unwrap();
        for cut in 1..good.len() {
            assert_eq!(parse(&good[..cut]), None, "cut at {cut}");
        }
        // A missing NUL terminator.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] = b'x';
        assert_eq!(parse(&bad), None);
        // Lengths that run past the end, or overflow.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&bad), None);
        let mut bad = good;
        bad[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&bad), None);
    }
}
