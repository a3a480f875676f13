//! DataComp's fraction rule, computed exactly over all ranks with two count all-reduces.
//!
//! The threshold for keeping a fraction f of N scores is the ⌊N·f⌋-th largest score (keep
//! `score >= threshold`, so exactly ⌊N·f⌋ are kept unless scores tie). Each rank holds only
//! its own scores; instead of gathering them, the ranks sum two 65,536-bin histograms of the
//! scores' order-preserving 32-bit keys: the high 16 bits find the bin holding the k-th
//! largest, the low 16 bits of the scores in that bin find the exact value. The result is
//! bit-identical for any number of ranks or any split of the scores.
use crate::error::CurateError;
use crate::reduce::CountReducer;

/// Bins per histogram level (16 bits of the 32-bit key).
const BINS: usize = 1 << 16;

/// A 32-bit key whose unsigned order is the numeric order of finite `score`s.
pub fn order_key(score: f32) -> u32 {
    let bits = score.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The score whose [`order_key`] is `key`.
pub fn score_of_key(key: u32) -> f32 {
    if key & 0x8000_0000 != 0 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

/// How many of `total` scores the fraction rule keeps: ⌊total · fraction⌋.
pub fn kept_count(total: u64, fraction: f64) -> u64 {
    ((total as f64) * fraction).floor().min(total as f64) as u64
}

/// The threshold that keeps the top `fraction` of the scores of all ranks (`local` holds this
/// rank's finite scores); every rank gets the same value. Keeping nothing (⌊N·f⌋ = 0) gives
/// +∞.
pub fn fraction_threshold(local: &[f32], fraction: f64, reducer: &dyn CountReducer) -> Result<f32, CurateError> {
    let mut high = vec![0u64; BINS];
    for &score in local {
        high[(order_key(score) >> 16) as usize] += 1;
    }
    reducer.all_reduce_sum(&mut high)?;
    let total: u64 = high.iter().sum();
    let wanted = kept_count(total, fraction);
    if wanted == 0 {
        return Ok(f32::INFINITY);
    }
    let (high_bin, rank_in_bin) = nth_from_top(&high, wanted);

    let mut low = vec![0u64; BINS];
    for &score in local {
        let key = order_key(score);
        if (key >> 16) as usize == high_bin {
            low[(key & 0xffff) as usize] += 1;
        }
    }
    reducer.all_reduce_sum(&mut low)?;
    let (low_bin, _) = nth_from_top(&low, rank_in_bin);
    Ok(score_of_key(((high_bin as u32) << 16) | low_bin as u32))
}

/// The bin holding the `n`-th largest item (1-based) of a histogram, and that item's rank
/// (1-based, from the top) within the bin. `n` must be between 1 and the histogram's total.
fn nth_from_top(histogram: &[u64], n: u64) -> (usize, u64) {
    let mut above = 0u64;
    for bin in (0..histogram.len()).rev() {
        if above + histogram[bin] >= n {
            return (bin, n - above);
        }
        above += histogram[bin];
    }
    // Unreachable when n <= total; the lowest bin is the safe answer otherwise.
    (0, n.saturating_sub(above))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::SingleProcess;
    use std::sync::Mutex;

    #[test]
    fn order_keys_sort_like_scores() {
        let scores = [-1.0f32, -0.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 0.2500001, 1.0];
        let keys: Vec<u32> = scores.iter().map(|&s| order_key(s)).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:x?}");
        for s in scores {
            assert_eq!(score_of_key(order_key(s)).to_bits(), s.to_bits());
        }
    }

    /// The rule written the obvious way: sort descending, take the ⌊N·f⌋-th.
    fn sorted_threshold(scores: &[f32], fraction: f64) -> f32 {
        let mut sorted = scores.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let n = kept_count(scores.len() as u64, fraction) as usize;
        if n == 0 {
            f32::INFINITY
        } else {
            sorted[n - 1]
        }
    }

    fn pseudo_scores(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let u = crate::stage::SampleRng::new(seed, &i.to_string()).uniform(0);
                // Clustered like real CLIP scores, with exact ties every 97th sample.
                if i % 97 == 0 {
                    0.3
                } else {
                    (0.2 + 0.15 * (u - 0.5)) as f32
                }
            })
            .collect()
    }

    #[test]
    fn matches_sorting_for_many_fractions() {
        let scores = pseudo_scores(5_000, 3);
        for fraction in [0.0, 0.0001, 0.1, 0.3, 0.5, 0.999, 1.0] {
            let got = fraction_threshold(&scores, fraction, &SingleProcess).unwrap();
            assert_eq!(
                got.to_bits(),
                sorted_threshold(&scores, fraction).to_bits(),
                "f={fraction}"
            );
            let kept = scores.iter().filter(|&&s| s >= got).count() as u64;
            // Ties at the threshold may add to ⌊N·f⌋, never subtract.
            assert!(kept >= kept_count(5_000, fraction), "f={fraction} kept {kept}");
        }
        assert_eq!(fraction_threshold(&[], 0.5, &SingleProcess).unwrap(), f32::INFINITY);
        let negative = [-0.9f32, -0.1, -0.5];
        assert_eq!(fraction_threshold(&negative, 0.67, &SingleProcess).unwrap(), -0.5);
    }

    /// Ranks as threads: add into a shared sum, wait for all, read it, wait, reset, wait.
    struct ThreadWorld {
        world: usize,
        rank: usize,
        sum: std::sync::Arc<Mutex<Vec<u64>>>,
        barrier: std::sync::Arc<std::sync::Barrier>,
    }

    impl CountReducer for ThreadWorld {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            self.world
        }
        fn all_reduce_sum(&self, counts: &mut [u64]) -> Result<(), CurateError> {
            let poisoned = |e: std::sync::PoisonError<_>| CurateError::Reduce(format!("{e}"));
            {
                let mut sum = self.sum.lock().map_err(poisoned)?;
                sum.resize(counts.len(), 0);
                for (t, c) in sum.iter_mut().zip(counts.iter()) {
                    *t += c;
                }
            }
            self.barrier.wait();
            counts.copy_from_slice(&self.sum.lock().map_err(poisoned)?);
            if self.barrier.wait().is_leader() {
                self.sum.lock().map_err(poisoned)?.clear();
            }
            self.barrier.wait();
            Ok(())
        }
    }

    #[test]
    fn three_ranks_agree_with_one() {
        let scores = pseudo_scores(3_001, 9);
        let expected = fraction_threshold(&scores, 0.37, &SingleProcess).unwrap();
        let sum = std::sync::Arc::new(Mutex::new(Vec::new()));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let results: Vec<f32> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|rank| {
                    let reducer = ThreadWorld {
                        world: 3,
                        rank,
                        sum: sum.clone(),
                        barrier: barrier.clone(),
                    };
                    let mine: Vec<f32> = scores.iter().skip(rank).step_by(3).copied().collect();
                    scope.spawn(move || fraction_threshold(&mine, 0.37, &reducer).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results, vec![expected; 3]);
    }
}
