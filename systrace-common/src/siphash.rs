//! SipHash-1-3, written once for both sides: the agent hashes the components
//! of rule paths, the kernel hashes the names of a file's ancestors, and the
//! two must agree bit for bit. Keyed with a secret the agent draws at start, so
//! nobody can pick a file name that collides with a rule's.

#[derive(Clone, Copy)]
pub struct SipHasher13 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl SipHasher13 {
    #[inline(always)]
    pub const fn new(k0: u64, k1: u64) -> Self {
        SipHasher13 {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    /// Absorbs one full 8-byte block (little endian).
    #[inline(always)]
    pub fn block(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.v0 ^= m;
    }

    /// Absorbs the last 0 to 7 bytes (`tail`, little endian, zero above them)
    /// and the total length, and returns the hash. Works in place (the kernel
    /// side keeps the hasher in a map, and a copy would take BPF stack).
    #[inline(always)]
    pub fn finish(&mut self, tail: u64, len: usize) -> u64 {
        self.block(tail | ((len as u64) << 56));
        self.v2 ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// The hash of one path component.
pub fn name_hash(key: [u64; 2], name: &[u8]) -> u64 {
    let mut h = SipHasher13::new(key[0], key[1]);
    let mut chunks = name.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        h.block(u64::from_le_bytes(b));
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h.finish(u64::from_le_bytes(tail), name.len())
}

/// Longest extension a rule may name (`DIR/*.EXT`): the kernel looks for the
/// last dot among the last 16 bytes of a name.
pub const MAX_EXTENSION: usize = 15;

/// Tweak of the first key word for extension hashes, so an extension's hash
/// and a whole name's hash never share a key: a file cannot be named so that
/// it is taken for an extension rule.
const EXTENSION_TWEAK: u64 = 0x6578_7465_6e73_696f;

/// The extension of a name as rules match it: the bytes after its last dot,
/// when there are 1 to [`MAX_EXTENSION`] of them (`a.tar.gz` -> `gz`,
/// `.bashrc` -> `bashrc`, `README` and `x.` have none).
pub fn extension(name: &[u8]) -> Option<&[u8]> {
    let dot = name.iter().rposition(|&b| b == b'.')?;
    let ext = &name[dot + 1..];
    (!ext.is_empty() && ext.len() <= MAX_EXTENSION).then_some(ext)
}

/// An extension of at most [`MAX_EXTENSION`] bytes as two little-endian
/// words, zero above it: the form the kernel builds from the end of a name.
pub fn extension_words(ext: &[u8]) -> (u64, u64) {
    let mut b = [0u8; 16];
    let n = ext.len().min(MAX_EXTENSION);
    b[..n].copy_from_slice(&ext[..n]);
    let lo = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
    let hi = u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8]));
    (lo, hi)
}

/// The hash of an extension given as [`extension_words`]. Keyed like names,
/// with a tweak (see `EXTENSION_TWEAK`).
#[inline(always)]
pub fn extension_hash_words(hasher: &mut SipHasher13, k0: u64, k1: u64, lo: u64, hi: u64, len: usize) -> u64 {
    *hasher = SipHasher13::new(k0 ^ EXTENSION_TWEAK, k1);
    hasher.block(lo);
    hasher.finish(hi & 0x00ff_ffff_ffff_ffff, len)
}

/// The hash of an extension (`log` for `*.log`).
pub fn extension_hash(key: [u64; 2], ext: &[u8]) -> u64 {
    let (lo, hi) = extension_words(ext);
    let mut h = SipHasher13::new(0, 0);
    extension_hash_words(&mut h, key[0], key[1], lo, hi, ext.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differs_by_name_length_and_key() {
        let k = [1, 2];
        assert_ne!(name_hash(k, b"etc"), name_hash(k, b"etc\0"));
        assert_ne!(name_hash(k, b"shadow"), name_hash([1, 3], b"shadow"));
        assert_eq!(name_hash(k, b"a-name-longer-than-8"), name_hash(k, b"a-name-longer-than-8"));
        assert_ne!(name_hash(k, b"abcdefgh"), name_hash(k, b"abcdefgi"));
    }

    #[test]
    fn extensions() {
        assert_eq!(extension(b"a.tar.gz"), Some(&b"gz"[..]));
        assert_eq!(extension(b".bashrc"), Some(&b"bashrc"[..]));
        assert_eq!(extension(b"README"), None);
        assert_eq!(extension(b"x."), None);
        assert_eq!(extension(b"x.123456789012345"), Some(&b"123456789012345"[..]));
        assert_eq!(extension(b"x.1234567890123456"), None);
        let k = [1, 2];
        assert_ne!(extension_hash(k, b"log"), name_hash(k, b"log"));
        assert_ne!(extension_hash(k, b"log"), extension_hash(k, b"lo"));
        assert_ne!(extension_hash(k, b"123456789"), extension_hash(k, b"12345678"));
        assert_eq!(extension_words(b"123456789"), (u64::from_le_bytes(*b"12345678"), b'9' as u64));
    }
}
