//! Session cookies this VM has verified, by their exact values: a browser sends the same
//! cookie with every request of a session, and checking its MAC (or opening a sealed session)
//! each time is most of the work of an authenticated request.
//!
//! Only a session whose cookies verified is kept, so a client cannot put anything here; a hit
//! needs the very same cookie values (compared in constant time), and the lifetime checks
//! (`expires_at`, the configured maximum age) run on every hit as they do after a
//! verification. The cache belongs to one engine, which holds one configuration: a new
//! configuration (other keys, issuer, client or lifetime) starts with an empty cache.
//! Bounded in entries and bytes; when full, expired entries go first, then the oldest.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use crate::session::{Session, MAX_CHUNKS};
use crate::util::ct_eq;

/// Most sessions kept per VM.
pub const MAX_ENTRIES: usize = 2048;
/// Most bytes of cookie values and session fields kept per VM (an estimate per entry).
pub const MAX_BYTES: usize = 2 << 20;

struct Entry {
    provider: usize,
    key: String,
    /// Shared with the requests that hit it: a hit costs no copy of the session.
    session: Rc<Session>,
    bytes: usize,
}

/// The map's keys are `slot` hashes already: used as they are.
#[derive(Default)]
pub(crate) struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Kept for Entry {
    fn bytes(&self) -> usize {
        self.bytes
    }
    fn live(&self, now: u64) -> bool {
        self.session.expires_at > now
    }
}

#[derive(Default)]
pub struct VerifiedSessions {
    kept: Slots<Entry, MAX_ENTRIES, MAX_BYTES>,
    pub hits: u64,
    pub misses: u64,
}

/// What a `Slots` entry tells of itself: its size, and whether it may still serve.
pub(crate) trait Kept {
    fn bytes(&self) -> usize;
    fn live(&self, now: u64) -> bool;
}

/// Entries by `slot`, bounded to `ENTRIES` of them and `BYTES` (each entry's estimate); when
/// full, those no longer live go first, then the oldest. The session cache and the bearer
/// cache both keep theirs here.
pub(crate) struct Slots<E, const ENTRIES: usize, const BYTES: usize> {
    map: HashMap<u64, E, BuildHasherDefault<SlotHasher>>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl<E, const ENTRIES: usize, const BYTES: usize> Default for Slots<E, ENTRIES, BYTES> {
    fn default() -> Self {
        Slots {
            map: HashMap::default(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<E: Kept, const ENTRIES: usize, const BYTES: usize> Slots<E, ENTRIES, BYTES> {
    pub(crate) fn get(&self, h: u64) -> Option<&E> {
        self.map.get(&h)
    }

    pub(crate) fn remove(&mut self, h: u64) {
        if let Some(old) = self.map.remove(&h) {
            self.bytes -= old.bytes();
            self.order.retain(|k| *k != h);
        }
    }

    /// Keeps `entry` in slot `h` (in place of what was there), making room first. An entry
    /// over an eighth of `BYTES` is not kept.
    pub(crate) fn insert(&mut self, h: u64, entry: E, now: u64) {
        let bytes = entry.bytes();
        if bytes > BYTES / 8 {
            return;
        }
        self.remove(h);
        if self.map.len() >= ENTRIES || self.bytes + bytes > BYTES {
            self.map.retain(|_, e| e.live(now));
            self.order.retain(|k| self.map.contains_key(k));
            self.bytes = self.map.values().map(Kept::bytes).sum();
            while self.map.len() >= ENTRIES || self.bytes + bytes > BYTES {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                if let Some(e) = self.map.remove(&oldest) {
                    self.bytes -= e.bytes();
                }
            }
        }
        self.map.insert(h, entry);
        self.order.push_back(h);
        self.bytes += bytes;
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The cookie values a session is read from, as one string: `first` alone (format 2), or
/// `first` and its chunk cookies (format 3), joined by `;` (which no cookie value holds).
/// `None` when a chunk the first names is missing (verification then fails anyway).
pub fn cookie_key<'v>(
    first: &'v str,
    chunk: &dyn Fn(usize) -> Option<&'v str>,
) -> Option<Cow<'v, str>> {
    let n = match first.strip_prefix("3.").and_then(|r| r.split_once('.')) {
        Some((n, _)) => n.parse::<usize>().ok()?,
        None => return Some(Cow::Borrowed(first)),
    };
    if !(1..=MAX_CHUNKS).contains(&n) {
        return None;
    }
    let mut key = String::from(first);
    for i in 1..n {
        key.push(';');
        key.push_str(chunk(i)?);
    }
    Some(Cow::Owned(key))
}

/// A multiply-xor hash, eight bytes at a time, of the provider index, the key's length and
/// its first and last 48 bytes: a session's differ from every other's (a format-2 value ends
/// with its MAC, a format-3 one starts with its synthetic nonce). Not a keyed hash: a value
/// made to collide with a kept one only misses (the full values are compared) and is then
/// verified as usual.
pub(crate) fn slot(provider: usize, key: &str) -> u64 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    fn mix(mut h: u64, part: &[u8]) -> u64 {
        let words = part.chunks_exact(8);
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        for w in words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h = (h ^ u64::from_le_bytes(b)).wrapping_mul(M).rotate_left(29);
        }
        (h ^ u64::from_le_bytes(last)).wrapping_mul(M)
    }
    let k = key.as_bytes();
    let h = (provider as u64) ^ ((k.len() as u64) << 32);
    let h = if k.len() > 96 {
        mix(mix(h, &k[..48]), &k[k.len() - 48..])
    } else {
        mix(h, k)
    };
    h ^ (h >> 31)
}

pub(crate) fn size_of(key: &str, s: &Session) -> usize {
    let tokens = s.tokens.as_ref().map_or(0, |t| {
        t.id_token.len() + t.access_token.len() + t.refresh_token.len()
    });
    let strings: usize = s.claims.iter().map(String::len).sum::<usize>()
        + s.groups.iter().map(|g| g.len() + 24).sum::<usize>()
        + s.attrs
            .iter()
            .map(|(p, v)| p.len() + v.iter().map(|x| x.len() + 24).sum::<usize>())
            .sum::<usize>();
    // The entry, its map slot and order slot, and each allocation's overhead.
    key.len() + tokens + strings + 256
}

impl VerifiedSessions {
    /// The session kept for exactly these cookie values of `provider`'s cookie, if any.
    pub fn get(&mut self, provider: usize, key: &str) -> Option<Rc<Session>> {
        match self.kept.get(slot(provider, key)) {
            Some(e) if e.provider == provider && ct_eq(e.key.as_bytes(), key.as_bytes()) => {
                self.hits += 1;
                Some(Rc::clone(&e.session))
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Keeps `session`, which `key` (see `cookie_key`) just verified to, at `now`.
    pub fn put(&mut self, provider: usize, key: &str, session: &Rc<Session>, now: u64) {
        let entry = Entry {
            provider,
            key: key.to_string(),
            session: Rc::clone(session),
            bytes: size_of(key, session),
        };
        self.kept.insert(slot(provider, key), entry, now);
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.len() == 0
    }

    /// Bytes kept (the estimate the bound applies to).
    pub fn bytes(&self) -> usize {
        self.kept.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(expires_at: u64, sub: &str) -> Rc<Session> {
        Rc::new(Session {
            expires_at,
            issued_at: 0,
            claims: [sub.into(), String::new(), String::new()],
            groups: vec![],
            attrs: vec![],
            tokens: None,
        })
    }

    #[test]
    fn a_hit_needs_the_same_values_and_provider() {
        let mut c = VerifiedSessions::default();
        c.put(0, "2.abc.def", &session(100, "alice"), 10);
        assert_eq!(
            c.get(0, "2.abc.def").map(|s| s.claims[0].clone()),
            Some("alice".into())
        );
        assert!(c.get(0, "2.abc.deg").is_none());
        assert!(c.get(0, "2.abc.de").is_none());
        assert!(c.get(1, "2.abc.def").is_none());
        assert_eq!((c.hits, c.misses), (1, 3));
    }

    #[test]
    fn sealed_sessions_are_kept_by_all_their_chunks() {
        let chunks = ["3.3.AAAA", "BBBB", "CCCC"];
        let all = |i: usize| chunks.get(i).copied();
        assert_eq!(
            cookie_key(chunks[0], &all).as_deref(),
            Some("3.3.AAAA;BBBB;CCCC")
        );
        let other = ["3.3.AAAA", "BBBB", "CCCD"];
        let changed = |i: usize| other.get(i).copied();
        assert_ne!(cookie_key(chunks[0], &all), cookie_key(other[0], &changed));
        let missing = |i: usize| (i == 1).then_some("BBBB");
        assert_eq!(cookie_key(chunks[0], &missing), None);
        assert_eq!(cookie_key("3.9.AAAA", &all), None);
        assert_eq!(cookie_key("2.p.m", &all).as_deref(), Some("2.p.m"));
    }

    #[test]
    fn bounded_expired_first_then_oldest() {
        let mut c = VerifiedSessions::default();
        for i in 0..MAX_ENTRIES {
            // Every other one has expired by the time the cache is full.
            let exp = if i % 2 == 0 { 50 } else { 1000 };
            c.put(0, &format!("2.{i}.m"), &session(exp, "u"), 10);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        c.put(0, "2.new.m", &session(1000, "u"), 100);
        assert_eq!(c.len(), MAX_ENTRIES / 2 + 1);
        assert!(c.get(0, "2.0.m").is_none());
        assert!(c.get(0, "2.1.m").is_some());
        // Full of live entries: the oldest goes.
        for i in 0..MAX_ENTRIES {
            c.put(0, &format!("2.more{i}.m"), &session(1000, "u"), 100);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(c.get(0, "2.1.m").is_none());
        assert!(c.get(0, &format!("2.more{}.m", MAX_ENTRIES - 1)).is_some());
        assert!(c.bytes() <= MAX_BYTES);
    }

    #[test]
    fn bounded_in_bytes() {
        let mut c = VerifiedSessions::default();
        let big = "x".repeat(MAX_BYTES / 16);
        for i in 0..64 {
            c.put(0, &format!("3.1.{i}{big}"), &session(1000, "u"), 10);
            assert!(c.bytes() <= MAX_BYTES, "{}", c.bytes());
        }
        assert!(c.len() < 64);
        // Too large to be worth keeping: not kept at all.
        let huge = "x".repeat(MAX_BYTES / 4);
        c.put(0, &huge, &session(1000, "u"), 10);
        assert!(c.get(0, &huge).is_none());
    }
}
