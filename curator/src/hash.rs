//! The 64-bit hashing the stages share: FNV-1a over bytes, and SplitMix64's finaliser to
//! spread hashes of similar inputs over all 64 bits. [`crate::stage::SampleRng`] seeds its
//! draws with them and the `align` stage remembers texts and n-grams by them, so curated
//! outputs depend on them staying exactly as they are.

/// FNV-1a's offset basis: the hash of no bytes.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// `hash` extended by `bytes` (FNV-1a).
pub(crate) fn fnv_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64's output function (its finaliser).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
