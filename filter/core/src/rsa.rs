//! RSA signature verification (RFC 8017): RSASSA-PKCS1-v1_5 (`RS256/384/512`) and RSASSA-PSS
//! with the salt as long as the hash (`PS256/384/512`, RFC 7518 §3.5).
//!
//! Only the public operation `s^e mod n` is computed, on public values (key and signature), so
//! nothing here needs to run in constant time. Montgomery multiplication over 32-bit limbs:
//! wasm multiplies 32×32→64 natively. The padding is checked by building the expected encoding
//! (PKCS#1 v1.5) or by RFC 8017 §9.1.2's steps (PSS), never by parsing ASN.1.

use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::util::ct_eq;

/// Largest modulus accepted, in bits (as RSA implementations commonly cap public keys: a
/// JWKS cannot make a login cost more than a 4096-bit key's verification).
pub const MAX_BITS: usize = 4096;

/// The hash of an `alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => run::<Sha256>(parts),
            Hash::Sha384 => run::<Sha384>(parts),
            Hash::Sha512 => run::<Sha512>(parts),
        }
    }

    fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The DER `DigestInfo` prefix of RFC 8017 §9.2, note 1.
    fn digest_info(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// An RSA public key, with what its Montgomery arithmetic needs precomputed.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The modulus, least significant limb first, no zero limb on top.
    n: Vec<u32>,
    bits: usize,
    e: u32,
    /// `-n⁻¹ mod 2³²`.
    n0inv: u32,
    /// `R² mod n`, `R = 2^(32·limbs)`.
    rr: Vec<u32>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSA-{} (e={})", self.bits, self.e)
    }
}

impl PublicKey {
    /// From the big-endian modulus and exponent (a JWK's `n` and `e`). `None` unless `n` is
    /// odd, greater than 1 and at most `MAX_BITS` bits, and `e` odd in `3..2³²`.
    pub fn new(n: &[u8], e: &[u8]) -> Option<PublicKey> {
        let n = limbs(n);
        let bits = bit_len(&n);
        let e = limbs(e);
        let e = match e.as_slice() {
            [] => return None,
            [e] => *e,
            _ => return None,
        };
        if !(2..=MAX_BITS).contains(&bits) || n[0] & 1 == 0 || e < 3 || e & 1 == 0 {
            return None;
        }
        let n0inv = inv_neg(n[0]);
        let k = n.len();
        // R mod n: 2^(bits-1) < n, doubled up to 2^(32k).
        let mut r = vec![0u32; k];
        r[(bits - 1) / 32] = 1 << ((bits - 1) % 32);
        for _ in 0..(32 * k - (bits - 1)) {
            double_mod(&mut r, &n);
        }
        // R² mod n is R in Montgomery form: (2 in Montgomery form) to the power 32k.
        let mut two = r.clone();
        double_mod(&mut two, &n);
        let mut rr = r;
        let mut scratch = vec![0u32; 2 * k + 1];
        let exp = 32 * k;
        for i in (0..usize::BITS - exp.leading_zeros()).rev() {
            rr = mont_mul(&rr, &rr, &n, n0inv, &mut scratch);
            if (exp >> i) & 1 == 1 {
                rr = mont_mul(&rr, &two, &n, n0inv, &mut scratch);
            }
        }
        Some(PublicKey {
            n,
            bits,
            e,
            n0inv,
            rr,
        })
    }

    /// The modulus' length in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The modulus' length in bytes: a signature's length.
    pub fn size(&self) -> usize {
        self.bits.div_ceil(8)
    }

    /// RSAVP1: `sig^e mod n`, big-endian in `size()` bytes; `None` if `sig` is not `size()`
    /// bytes or not below `n`.
    fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.size() {
            return None;
        }
        let k = self.n.len();
        // `size()` bytes make at most `k` limbs.
        let mut s = limbs(sig);
        s.resize(k, 0);
        if !below(&s, &self.n) {
            return None;
        }
        let mut scratch = vec![0u32; 2 * k + 1];
        let sm = mont_mul(&s, &self.rr, &self.n, self.n0inv, &mut scratch);
        let mut x = sm.clone();
        for i in (0..31 - self.e.leading_zeros()).rev() {
            x = mont_mul(&x, &x, &self.n, self.n0inv, &mut scratch);
            if (self.e >> i) & 1 == 1 {
                x = mont_mul(&x, &sm, &self.n, self.n0inv, &mut scratch);
            }
        }
        let mut one = vec![0u32; k];
        one[0] = 1;
        let m = mont_mul(&x, &one, &self.n, self.n0inv, &mut scratch);
        Some(to_bytes(&m, self.size()))
    }

    /// RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.2) of `message`'s `hash`.
    pub fn verify_pkcs1v15(&self, hash: Hash, message: &[u8], sig: &[u8]) -> bool {
        let Some(em) = self.public_op(sig) else {
            return false;
        };
        let digest = hash.digest(&[message]);
        let info = hash.digest_info();
        let t_len = info.len() + digest.len();
        if em.len() < t_len + 11 {
            return false;
        }
        let mut want = Vec::with_capacity(em.len());
        want.extend_from_slice(&[0x00, 0x01]);
        want.resize(em.len() - t_len - 1, 0xff);
        want.push(0x00);
        want.extend_from_slice(info);
        want.extend_from_slice(&digest);
        ct_eq(&em, &want)
    }

    /// RSASSA-PSS (RFC 8017 §8.1.2, §9.1.2) of `message`'s `hash`, MGF1 with the same hash,
    /// a salt of the hash's length.
    pub fn verify_pss(&self, hash: Hash, message: &[u8], sig: &[u8]) -> bool {
        let Some(out) = self.public_op(sig) else {
            return false;
        };
        let em_bits = self.bits - 1;
        let em_len = em_bits.div_ceil(8);
        // I2OSP(m, emLen): one leading zero byte when emLen is one short of the modulus'.
        let em = match out.split_at(out.len() - em_len) {
            ([], em) => em,
            ([0], em) => em,
            _ => return false,
        };
        let h_len = hash.len();
        let s_len = h_len;
        if em_len < h_len + s_len + 2 || em[em_len - 1] != 0xbc {
            return false;
        }
        let (masked_db, rest) = em.split_at(em_len - h_len - 1);
        let h = &rest[..h_len];
        let top_mask = 0xffu8 >> (8 * em_len - em_bits);
        if masked_db[0] & !top_mask != 0 {
            return false;
        }
        let mut db = mgf1(hash, h, masked_db.len());
        for (d, m) in db.iter_mut().zip(masked_db) {
            *d ^= m;
        }
        db[0] &= top_mask;
        let ps_len = em_len - h_len - s_len - 2;
        if db[..ps_len].iter().any(|b| *b != 0) || db[ps_len] != 0x01 {
            return false;
        }
        let salt = &db[ps_len + 1..];
        let m_hash = hash.digest(&[message]);
        let h2 = hash.digest(&[&[0u8; 8], &m_hash, salt]);
        ct_eq(h, &h2)
    }
}

/// MGF1 (RFC 8017 §B.2.1).
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.len());
    let mut counter = 0u32;
    while out.len() < len {
        out.extend_from_slice(&hash.digest(&[seed, &counter.to_be_bytes()]));
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// Big-endian bytes to limbs, least significant first, without zero limbs on top.
fn limbs(be: &[u8]) -> Vec<u32> {
    let mut out: Vec<u32> = be
        .rchunks(4)
        .map(|c| c.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
        .collect();
    while out.last() == Some(&0) {
        out.pop();
    }
    out
}

fn to_bytes(x: &[u32], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, b) in out.iter_mut().rev().enumerate() {
        if let Some(l) = x.get(i / 4) {
            *b = (l >> (8 * (i % 4))) as u8;
        }
    }
    out
}

fn bit_len(x: &[u32]) -> usize {
    match x.last() {
        Some(top) => 32 * x.len() - top.leading_zeros() as usize,
        None => 0,
    }
}

/// `a -= b` modulo `2^(32·a.len())`, both of the same length.
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let v = u64::from(*x).wrapping_sub(u64::from(*y) + borrow);
        *x = v as u32;
        borrow = (v >> 63) & 1;
    }
}

/// `x = 2x mod n`, for `x < n` (both `n.len()` limbs).
fn double_mod(x: &mut [u32], n: &[u32]) {
    let mut carry = 0u32;
    for l in x.iter_mut() {
        let next = *l >> 31;
        *l = (*l << 1) | carry;
        carry = next;
    }
    if carry == 1 || !below(x, n) {
        sub_in_place(x, n);
    }
}

/// `x < n`, both of `n.len()` limbs (zero limbs on top allowed).
fn below(x: &[u32], n: &[u32]) -> bool {
    for (a, b) in x.iter().rev().zip(n.iter().rev()) {
        if a != b {
            return a < b;
        }
    }
    false
}

/// `-x⁻¹ mod 2³²` for odd `x` (Newton's iteration; each step doubles the correct bits).
fn inv_neg(x: u32) -> u32 {
    let mut inv = x; // correct to 3 bits: x·x ≡ 1 (mod 8)
    for _ in 0..4 {
        inv = inv.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(inv)));
    }
    inv.wrapping_neg()
}

/// `t += x·y` over `t.len()` limbs of `t` and `y`'s limbs; returns the carry out.
#[inline(always)]
fn mul_add(t: &mut [u32], x: u32, y: &[u32]) -> u32 {
    let x = u64::from(x);
    let mut c = 0u64;
    for (tj, yj) in t.iter_mut().zip(y) {
        let s = u64::from(*tj) + x * u64::from(*yj) + c;
        *tj = s as u32;
        c = s >> 32;
    }
    c as u32
}

/// Montgomery product `a·b·R⁻¹ mod n` (separated operand scanning: the product, then the
/// reduction), for `a, b < n`, all `n.len()` limbs; `t` is scratch of `2·n.len() + 1` limbs.
fn mont_mul(a: &[u32], b: &[u32], n: &[u32], n0inv: u32, t: &mut [u32]) -> Vec<u32> {
    let k = n.len();
    let t = &mut t[..2 * k + 1];
    t.iter_mut().for_each(|x| *x = 0);
    if std::ptr::eq(a, b) {
        // a²: the products below the diagonal once, doubled, then the squares.
        for i in 0..k {
            let c = mul_add(&mut t[2 * i + 1..i + k], a[i], &a[i + 1..]);
            t[i + k] = c;
        }
        let mut carry = 0u32;
        for x in t[..2 * k].iter_mut() {
            let next = *x >> 31;
            *x = (*x << 1) | carry;
            carry = next;
        }
        let mut c = 0u64;
        for i in 0..k {
            let sq = u64::from(a[i]) * u64::from(a[i]);
            let lo = u64::from(t[2 * i]) + (sq & 0xffff_ffff) + c;
            t[2 * i] = lo as u32;
            let hi = u64::from(t[2 * i + 1]) + (sq >> 32) + (lo >> 32);
            t[2 * i + 1] = hi as u32;
            c = hi >> 32;
        }
    } else {
        for (i, &ai) in a.iter().enumerate().take(k) {
            let c = mul_add(&mut t[i..i + k], ai, b);
            t[i + k] = c;
        }
    }
    reduce(t, n, n0inv)
}

/// Montgomery reduction `t·R⁻¹ mod n` of a product `t < n·R` (`2·n.len() + 1` limbs).
fn reduce(t: &mut [u32], n: &[u32], n0inv: u32) -> Vec<u32> {
    let k = n.len();
    for i in 0..k {
        let m = t[i].wrapping_mul(n0inv);
        let c = mul_add(&mut t[i..i + k], m, n);
        // Carry into the limbs above (t[i + k] at first; rarely further).
        let mut c = u64::from(c);
        for tj in t[i + k..].iter_mut() {
            if c == 0 {
                break;
            }
            let s = u64::from(*tj) + c;
            *tj = s as u32;
            c = s >> 32;
        }
    }
    // t / R < 2n: one subtraction at most.
    let mut out = t[k..2 * k].to_vec();
    if t[2 * k] != 0 || !below(&out, n) {
        sub_in_place(&mut out, n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_is_one_when_multiplied() {
        for x in [1u32, 3, 0xffff_ffff, 0x1234_5677, 65537] {
            assert_eq!(x.wrapping_mul(inv_neg(x).wrapping_neg()), 1, "{x}");
        }
    }

    #[test]
    fn small_modulus_powers_match_plain_arithmetic() {
        // n = 3233 (61·53), e = 17: m^e mod n by hand for every m < n that the key accepts.
        let key = PublicKey::new(&3233u32.to_be_bytes()[2..], &[17]).unwrap();
        assert_eq!(key.bits(), 12);
        for m in [0u64, 1, 2, 65, 1000, 3232] {
            let want = (0..17).fold(1u64, |acc, _| acc * m % 3233);
            let got = key.public_op(&(m as u16).to_be_bytes()).unwrap();
            assert_eq!(
                u64::from(u16::from_be_bytes([got[0], got[1]])),
                want,
                "m={m}"
            );
        }
        assert_eq!(key.public_op(&3233u16.to_be_bytes()), None, "s = n");
        assert_eq!(key.public_op(&[0x0c]), None, "short signature");
    }

    use ::rsa::traits::PublicKeyParts;
    use ::rsa::{Pkcs1v15Sign, Pss, RsaPrivateKey};
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    fn sign(
        key: &RsaPrivateKey,
        hash: Hash,
        pss: bool,
        msg: &[u8],
        rng: &mut ChaCha8Rng,
    ) -> Vec<u8> {
        let digest = hash.digest(&[msg]);
        let signed = match (hash, pss) {
            (Hash::Sha256, false) => key.sign(Pkcs1v15Sign::new::<Sha256>(), &digest),
            (Hash::Sha384, false) => key.sign(Pkcs1v15Sign::new::<Sha384>(), &digest),
            (Hash::Sha512, false) => key.sign(Pkcs1v15Sign::new::<Sha512>(), &digest),
            (Hash::Sha256, true) => key.sign_with_rng(rng, Pss::new::<Sha256>(), &digest),
            (Hash::Sha384, true) => key.sign_with_rng(rng, Pss::new::<Sha384>(), &digest),
            (Hash::Sha512, true) => key.sign_with_rng(rng, Pss::new::<Sha512>(), &digest),
        };
        signed.unwrap()
    }

    /// Signatures made by the `rsa` crate verify here, for every alg and key sizes around
    /// the edges (2049 bits: PSS's encoded message one byte shorter than the modulus), and
    /// any change to signature, message, hash or scheme makes them fail.
    #[test]
    fn signatures_of_an_independent_implementation_verify_and_tampered_ones_do_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for bits in [2048, 2049, 2055, 3072, 4096] {
            let sk = RsaPrivateKey::new(&mut rng, bits).unwrap();
            let pk = PublicKey::new(&sk.n().to_bytes_be(), &sk.e().to_bytes_be()).unwrap();
            assert_eq!(pk.bits(), bits);
            for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
                for pss in [false, true] {
                    let mut msg = vec![0u8; 1 + (rng.next_u32() % 300) as usize];
                    rng.fill_bytes(&mut msg);
                    let sig = sign(&sk, hash, pss, &msg, &mut rng);
                    let verify = |h: Hash, p: bool, m: &[u8], s: &[u8]| {
                        if p {
                            pk.verify_pss(h, m, s)
                        } else {
                            pk.verify_pkcs1v15(h, m, s)
                        }
                    };
                    let what = format!("{bits} bits, {hash:?}, pss={pss}");
                    assert!(verify(hash, pss, &msg, &sig), "{what}");
                    assert!(!verify(hash, !pss, &msg, &sig), "{what}: other scheme");
                    let other = if hash == Hash::Sha256 {
                        Hash::Sha512
                    } else {
                        Hash::Sha256
                    };
                    assert!(!verify(other, pss, &msg, &sig), "{what}: other hash");
                    let mut m2 = msg.clone();
                    m2[0] ^= 1;
                    assert!(!verify(hash, pss, &m2, &sig), "{what}: other message");
                    for i in [0, sig.len() / 2, sig.len() - 1] {
                        let mut s2 = sig.clone();
                        s2[i] ^= 0x10;
                        assert!(!verify(hash, pss, &msg, &s2), "{what}: byte {i} changed");
                    }
                    assert!(!verify(hash, pss, &msg, &sig[1..]), "{what}: short");
                    let mut long = vec![0];
                    long.extend_from_slice(&sig);
                    assert!(!verify(hash, pss, &msg, &long), "{what}: long");
                    // s + n ≡ s (mod n) but is out of range: refused (RFC 8017 §5.2.2).
                    let n = sk.n().to_bytes_be();
                    let mut sum = vec![0u8; sig.len()];
                    let mut carry = 0u16;
                    for i in (0..sig.len()).rev() {
                        let v = u16::from(sig[i]) + u16::from(n[i]) + carry;
                        sum[i] = v as u8;
                        carry = v >> 8;
                    }
                    if carry == 0 {
                        assert!(!verify(hash, pss, &msg, &sum), "{what}: s + n");
                    }
                }
            }
        }
    }

    #[test]
    fn keys_outside_the_accepted_shapes_are_refused() {
        assert!(PublicKey::new(&[0x0c, 0xa0], &[17]).is_none(), "even n");
        assert!(PublicKey::new(&[0x0c, 0xa1], &[16]).is_none(), "even e");
        assert!(PublicKey::new(&[0x0c, 0xa1], &[1]).is_none(), "e = 1");
        assert!(
            PublicKey::new(&[0x0c, 0xa1], &[1, 0, 0, 0, 1]).is_none(),
            "e ≥ 2³²"
        );
        assert!(PublicKey::new(&[0x00, 0x01], &[3]).is_none(), "n = 1");
        let mut big = vec![0xffu8; MAX_BITS / 8 + 1];
        big[0] = 1;
        assert!(PublicKey::new(&big, &[1, 0, 1]).is_none(), "too long");
        assert!(
            PublicKey::new(&big[1..], &[1, 0, 1]).is_some(),
            "MAX_BITS itself"
        );
    }
}
