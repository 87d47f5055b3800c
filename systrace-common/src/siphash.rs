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
}
