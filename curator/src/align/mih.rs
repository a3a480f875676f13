//! Near-duplicate lookup among 64-bit hashes without comparing every pair: multi-index
//! hashing over four 16-bit bands.
//!
//! If two hashes differ in at most `d` bits, then by pigeonhole one of their four bands
//! differs in at most ⌊d/4⌋ bits. A query therefore probes, in each band's table, every
//! band value within ⌊d/4⌋ bits of its own (1 value for d < 4, 17 for d < 8, 137 for
//! d < 12, ...) and checks the full distance only for the hashes filed there.
use super::phash::hamming;

const BANDS: usize = 4;
const BAND_BITS: u32 = 16;

/// An index of 64-bit hashes answering "is there one within `max_distance` bits?".
pub struct NearIndex {
    max_distance: u32,
    hashes: Vec<u64>,
    /// Per band: band value → positions in `hashes`.
    tables: Vec<Vec<Vec<u32>>>,
}

impl NearIndex {
    /// An empty index for queries within `max_distance` bits.
    pub fn new(max_distance: u32) -> Self {
        Self {
            max_distance,
            hashes: Vec::new(),
            tables: (0..BANDS).map(|_| vec![Vec::new(); 1 << BAND_BITS]).collect(),
        }
    }

    /// Number of hashes filed.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether nothing is filed yet.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// File `hash`.
    pub fn insert(&mut self, hash: u64) {
        let position = self.hashes.len() as u32;
        self.hashes.push(hash);
        for (band, table) in self.tables.iter_mut().enumerate() {
            table[band_value(hash, band) as usize].push(position);
        }
    }

    /// The first filed hash (in insertion order) within `max_distance` bits of `hash`.
    pub fn find_near(&self, hash: u64) -> Option<u64> {
        let radius = self.max_distance / BANDS as u32;
        let mut best: Option<u32> = None;
        for (band, table) in self.tables.iter().enumerate() {
            for_each_within(band_value(hash, band), radius, &mut |value| {
                for &position in &table[value as usize] {
                    if best.is_some_and(|b| b <= position) {
                        continue;
                    }
                    if hamming(self.hashes[position as usize], hash) <= self.max_distance {
                        best = Some(position);
                    }
                }
            });
        }
        best.map(|p| self.hashes[p as usize])
    }
}

fn band_value(hash: u64, band: usize) -> u16 {
    (hash >> (band as u32 * BAND_BITS)) as u16
}

/// Call `visit` on every 16-bit value within `radius` bits of `value` (itself included).
fn for_each_within(value: u16, radius: u32, visit: &mut impl FnMut(u16)) {
    fn flip_from(value: u16, first_bit: u32, left: u32, visit: &mut impl FnMut(u16)) {
        visit(value);
        if left == 0 {
            return;
        }
        for bit in first_bit..BAND_BITS {
            flip_from(value ^ (1 << bit), bit + 1, left - 1, visit);
        }
    }
    flip_from(value, 0, radius.min(BAND_BITS), visit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_count_the_ball_exactly_once() {
        for (radius, expected) in [(0, 1), (1, 17), (2, 137)] {
            let mut seen = std::collections::HashSet::new();
            let mut calls = 0;
            for_each_within(0xbeef, radius, &mut |v| {
                calls += 1;
                seen.insert(v);
                assert!(hamming(u64::from(v), 0xbeef) <= radius);
            });
            assert_eq!((calls, seen.len()), (expected, expected));
        }
    }

    /// Against brute force on clustered random hashes, for several distances.
    #[test]
    fn finds_what_brute_force_finds() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state ^ (state >> 29)
        };
        let centres: Vec<u64> = (0..20).map(|_| next()).collect();
        let hashes: Vec<u64> = (0..600)
            .map(|i| {
                // A centre with a few random bits flipped: near pairs at all distances.
                let mut h = centres[i % centres.len()];
                for _ in 0..(next() % 12) {
                    h ^= 1 << (next() % 64);
                }
                h
            })
            .collect();
        for max_distance in [0, 3, 5, 10] {
            let mut index = NearIndex::new(max_distance);
            for (i, &h) in hashes.iter().enumerate() {
                let brute = hashes[..i].iter().copied().find(|&e| hamming(e, h) <= max_distance);
                assert_eq!(index.find_near(h), brute, "distance {max_distance}, hash {i}");
                index.insert(h);
            }
            assert_eq!(index.len(), hashes.len());
        }
    }
}
