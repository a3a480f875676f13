//! Data parallelism over a [`Collective`]: the same parameters on every rank at
//! start ([`broadcast_parameters`], [`verify_parameters_equal`]) and the same
//! gradients after every backward ([`GradSync`]).
//!
//! Scale convention (see [`crate::loss::global`]): each rank's loss is its share of
//! the global-batch loss, already divided by the global batch size, so the
//! gradient of the global loss is the plain SUM of the ranks' gradients. With
//! k accumulated micro-batches, pass `scale = 1/k`.

use std::time::Instant;

use tch::{nn, Device, Tensor};

use crate::dist::{Collective, DistError};
use crate::optim::Gradients;

/// PyTorch DDP's default bucket size: large enough that per-message latency is
/// amortised, small enough that the flat copy stays cheap.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Sums gradients over ranks, in buckets of about `bucket_bytes`.
#[derive(Debug, Clone)]
pub struct GradSync {
    bucket_bytes: usize,
}

/// What one synchronisation did (for logs and the scaling benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SyncStats {
    /// All-reduce calls made for gradients.
    pub buckets: usize,
    /// Gradient bytes reduced.
    pub bytes: usize,
    /// Wall time of the whole synchronisation, copies included.
    pub seconds: f64,
}

impl Default for GradSync {
    fn default() -> Self {
        GradSync::new(DEFAULT_BUCKET_BYTES)
    }
}

impl GradSync {
    /// Buckets of at most `bucket_bytes` (a single larger gradient is its own bucket).
    pub fn new(bucket_bytes: usize) -> Self {
        GradSync {
            bucket_bytes: bucket_bytes.max(1),
        }
    }

    /// Replaces every gradient by `scale` × its sum over ranks. Every rank must
    /// call this with gradients of the same parameters in the same order; a
    /// parameter without gradient must be so on every rank (checked: otherwise
    /// all ranks get the same error).
    pub fn all_reduce(&self, grads: &mut Gradients, scale: f64, coll: &dyn Collective) -> Result<SyncStats, DistError> {
        let start = Instant::now();
        let grads = grads.tensors_mut();
        let mut stats = SyncStats::default();
        if coll.world_size() > 1 {
            check_same_defined(grads, coll)?;
            for bucket in self.buckets(grads) {
                stats.buckets += 1;
                stats.bytes += bucket.iter().map(|&i| byte_size(&grads[i])).sum::<usize>();
                reduce_bucket(grads, &bucket, scale, coll)?;
            }
        } else if scale != 1.0 {
            tch::no_grad(|| {
                for g in grads.iter_mut().filter(|g| g.defined()) {
                    // Out of place: autograd's gradients may be expanded or shared.
                    *g = &*g * scale;
                }
            });
        }
        stats.seconds = start.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Indices of defined gradients, grouped in order into buckets of one
    /// dtype and device and at most `bucket_bytes` (or one larger tensor).
    fn buckets(&self, grads: &[Tensor]) -> Vec<Vec<usize>> {
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut current_bytes = 0;
        for (i, g) in grads.iter().enumerate().filter(|(_, g)| g.defined()) {
            let bytes = byte_size(g);
            let compatible = current
                .first()
                .is_none_or(|&j| grads[j].kind() == g.kind() && grads[j].device() == g.device());
            if !current.is_empty() && (!compatible || current_bytes + bytes > self.bucket_bytes) {
                buckets.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current.push(i);
            current_bytes += bytes;
        }
        if !current.is_empty() {
            buckets.push(current);
        }
        buckets
    }
}

fn byte_size(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// All ranks must agree on which gradients exist, or the buckets would not line up.
fn check_same_defined(grads: &[Tensor], coll: &dyn Collective) -> Result<(), DistError> {
    let defined: Vec<i64> = grads.iter().map(|g| g.defined() as i64).collect();
    let mut counts = Tensor::from_slice(&defined);
    coll.all_reduce_sum_(&mut counts)?;
    let counts = Vec::<i64>::try_from(&counts).map_err(|e| DistError::Tensor {
        op: "GradSync::all_reduce",
        reason: e.to_string(),
    })?;
    let world = coll.world_size() as i64;
    if let Some(index) = counts.iter().position(|&c| c != 0 && c != world) {
        return Err(DistError::Tensor {
            op: "GradSync::all_reduce",
            reason: format!(
                "gradient {index} (in the optimizer's name order) exists on {} of {world} ranks; a parameter must get a gradient on all ranks or none",
                counts[index]
            ),
        });
    }
    Ok(())
}

fn reduce_bucket(grads: &mut [Tensor], bucket: &[usize], scale: f64, coll: &dyn Collective) -> Result<(), DistError> {
    tch::no_grad(|| {
        if let [only] = bucket {
            let ptr = grads[*only].data_ptr();
            let aliased = grads
                .iter()
                .enumerate()
                .any(|(i, g)| i != *only && g.defined() && g.data_ptr() == ptr);
            let g = &mut grads[*only];
            // Autograd may hand out expanded (stride-0) gradients, or the same
            // tensor for two parameters (the inputs of an add): reduce those
            // through a fresh buffer instead of in place.
            if g.is_contiguous() && !aliased {
                coll.all_reduce_sum_(g)?;
                if scale != 1.0 {
                    let _ = g.g_mul_scalar_(scale);
                }
                return Ok(());
            }
        }
        let flats: Vec<Tensor> = bucket.iter().map(|&i| grads[i].reshape([-1])).collect();
        let mut flat = Tensor::cat(&flats, 0);
        coll.all_reduce_sum_(&mut flat)?;
        if scale != 1.0 {
            let _ = flat.g_mul_scalar_(scale);
        }
        // The gradients become views of the reduced buffer: no copy back, and
        // no write into tensors autograd may share.
        let mut offset = 0;
        for &i in bucket {
            let n = grads[i].numel() as i64;
            let size = grads[i].size();
            grads[i] = flat.narrow(0, offset, n).view(size.as_slice());
            offset += n;
        }
        Ok(())
    })
}

/// The store's variables sorted by name: the same order on every rank.
fn sorted_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Copies rank 0's values of every variable of `vs` into every rank's `vs`
/// (all ranks must have built the same model).
pub fn broadcast_parameters(vs: &nn::VarStore, coll: &dyn Collective) -> Result<(), DistError> {
    if coll.world_size() == 1 {
        return Ok(());
    }
    check_same_names(vs, coll)?;
    tch::no_grad(|| {
        for (_, mut param) in sorted_variables(vs) {
            coll.broadcast_(&mut param, 0)?;
        }
        Ok(())
    })
}

/// Checks that every rank holds bitwise the same variables as rank 0 (names,
/// shapes, dtypes and values, through a 64-bit hash per variable). Returns the
/// same error on every rank if any rank differs, naming the first differing
/// variable this rank sees.
pub fn verify_parameters_equal(vs: &nn::VarStore, coll: &dyn Collective) -> Result<(), DistError> {
    if coll.world_size() == 1 {
        return Ok(());
    }
    check_same_names(vs, coll)?;
    let named = sorted_variables(vs);
    let local: Vec<i64> = named.iter().map(|(name, t)| hash_variable(name, t) as i64).collect();
    let mut reference = Tensor::from_slice(&local);
    coll.broadcast_(&mut reference, 0)?;
    let reference = Vec::<i64>::try_from(&reference).map_err(|e| DistError::Tensor {
        op: "verify_parameters_equal",
        reason: e.to_string(),
    })?;
    let differing: Vec<&str> = named
        .iter()
        .zip(local.iter().zip(&reference))
        .filter(|(_, (a, b))| a != b)
        .map(|((name, _), _)| name.as_str())
        .collect();
    let mut total = Tensor::from_slice(&[differing.len() as i64]);
    coll.all_reduce_sum_(&mut total)?;
    let total = total.int64_value(&[0]);
    if total > 0 {
        let mine = match differing.first() {
            Some(first) => format!(
                "rank {} differs from rank 0 in {} variables, first {first}",
                coll.rank(),
                differing.len()
            ),
            None => format!("rank {} equals rank 0", coll.rank()),
        };
        return Err(DistError::Tensor {
            op: "verify_parameters_equal",
            reason: format!("{total} variables differ from rank 0 across the ranks ({mine})"),
        });
    }
    Ok(())
}

/// Same number of variables and the same names on every rank, or an error on all.
fn check_same_names(vs: &nn::VarStore, coll: &dyn Collective) -> Result<(), DistError> {
    let named = sorted_variables(vs);
    let mut hasher = Fnv64::new();
    for (name, t) in &named {
        hasher.write(name.as_bytes());
        for d in t.size() {
            hasher.write(&d.to_le_bytes());
        }
    }
    let local = [named.len() as i64, hasher.finish() as i64];
    let mut reference = Tensor::from_slice(&local);
    coll.broadcast_(&mut reference, 0)?;
    let same = Vec::<i64>::try_from(&reference).map(|r| r == local).unwrap_or(false);
    let mut differing = Tensor::from_slice(&[(!same) as i64]);
    coll.all_reduce_sum_(&mut differing)?;
    let differing = differing.int64_value(&[0]);
    if differing > 0 {
        return Err(DistError::Tensor {
            op: "broadcast_parameters",
            reason: format!(
                "{differing} ranks hold other variable names or shapes than rank 0 (this rank {}: {} variables{})",
                coll.rank(),
                named.len(),
                if same {
                    ", same as rank 0"
                } else {
                    ", differs from rank 0"
                }
            ),
        });
    }
    Ok(())
}

/// FNV-1a over the name, dtype, shape and raw bytes of a variable.
fn hash_variable(name: &str, t: &Tensor) -> u64 {
    let mut hasher = Fnv64::new();
    hasher.write(name.as_bytes());
    hasher.write(format!("{:?}{:?}", t.kind(), t.size()).as_bytes());
    let host = t.detach().to_device(Device::Cpu).contiguous();
    let n = host.numel();
    let mut bytes = vec![0u8; n * host.kind().elt_size_in_bytes()];
    if host.f_copy_data_u8(&mut bytes, n).is_err() {
        // Unreadable (should not happen for CPU copies): make it differ from everything.
        return u64::MAX;
    }
    hasher.write(&bytes);
    hasher.finish()
}

/// 64-bit FNV-1a, word-at-a-time over the bulk of the bytes (only equality
/// within one build matters, so the variant needs no external spec).
struct Fnv64(u64);

impl Fnv64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(word);
            self.0 = (self.0 ^ u64::from_le_bytes(buf)).wrapping_mul(Self::PRIME);
        }
        for &b in words.remainder() {
            self.0 = (self.0 ^ b as u64).wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::local::LocalGroup;
    use crate::optim::{AdamW, OptimConfig};
    use tch::nn::Init;
    use tch::Kind;

    /// Three parameters of different sizes; value `fill` everywhere.
    fn store(fill: f64) -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = root.var("a", &[3, 4], Init::Const(fill));
        let _ = root.var("b", &[5], Init::Const(fill));
        let _ = root.var("c", &[2, 2, 2], Init::Const(fill));
        vs
    }

    /// On rank r, parameter number `index` (name order a, b, c) gets the constant
    /// gradient (r+1)(index+1) when its value is 1. `skip` leaves one out.
    fn rank_gradients(vs: &nn::VarStore, rank: usize, skip: Option<&str>) -> (AdamW, Gradients) {
        let opt = AdamW::new(vs.variables(), &OptimConfig::default());
        let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
        for (index, (name, p)) in sorted_variables(vs).into_iter().enumerate() {
            let k = ((rank + 1) * (index + 1)) as f64;
            // "a" through p²/2 at p = 1 (a contiguous gradient, reduced in place
            // when alone in its bucket); the others through a sum, whose
            // gradient autograd hands out expanded (stride 0).
            if skip == Some(name.as_str()) {
                continue;
            } else if index == 0 {
                loss += (&p * &p).sum(Kind::Float) * (k / 2.0);
            } else {
                loss += p.sum(Kind::Float) * k;
            }
        }
        let grads = opt.backward(&loss);
        (opt, grads)
    }

    #[test]
    fn gradients_are_summed_over_ranks_and_scaled() {
        for world in [2usize, 3] {
            // 40 bytes per bucket: "a" (48 bytes) alone, "b" + "c" (20 + 32) split.
            for bucket_bytes in [40usize, DEFAULT_BUCKET_BYTES] {
                let results = LocalGroup::run(world, |m| {
                    let vs = store(1.0);
                    let (_opt, mut grads) = rank_gradients(&vs, m.rank(), None);
                    let stats = GradSync::new(bucket_bytes)
                        .all_reduce(&mut grads, 0.5, m)
                        .expect("sync");
                    let values: Vec<Vec<f32>> = grads
                        .tensors()
                        .iter()
                        .map(|g| Vec::<f32>::try_from(g.flatten(0, -1)).expect("f32"))
                        .collect();
                    (stats, values)
                });
                let rank_sum: f32 = (1..=world).map(|r| r as f32).sum();
                for (stats, values) in results {
                    assert_eq!(stats.bytes, (12 + 5 + 8) * 4);
                    assert_eq!(stats.buckets, if bucket_bytes == 40 { 3 } else { 1 });
                    for (index, g) in values.iter().enumerate() {
                        let want = 0.5 * rank_sum * (index + 1) as f32;
                        assert!(
                            g.iter().all(|v| *v == want),
                            "world {world} bucket {bucket_bytes}: grad {index} = {g:?}, want {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_gradient_missing_on_one_rank_fails_every_rank() {
        let results = LocalGroup::run(2, |m| {
            let vs = store(0.0);
            let skip = (m.rank() == 1).then_some("b");
            let (_opt, mut grads) = rank_gradients(&vs, m.rank(), skip);
            GradSync::default().all_reduce(&mut grads, 1.0, m).map(|_| ())
        });
        for got in results {
            let err = got.expect_err("gradient 1 missing on rank 1").to_string();
            assert!(err.contains("gradient 1") && err.contains("1 of 2"), "{err}");
        }
    }

    #[test]
    fn a_gradient_missing_on_all_ranks_is_skipped() {
        let results = LocalGroup::run(2, |m| {
            let vs = store(0.0);
            let (_opt, mut grads) = rank_gradients(&vs, m.rank(), Some("c"));
            GradSync::default().all_reduce(&mut grads, 1.0, m).expect("sync");
            grads.tensors().iter().map(|g| g.defined()).collect::<Vec<_>>()
        });
        for defined in results {
            assert_eq!(defined, vec![true, true, false]);
        }
    }

    #[test]
    fn broadcast_makes_parameters_equal_and_verify_notices_differences() {
        for world in [2usize, 3] {
            let results = LocalGroup::run(world, |m| {
                let vs = store(m.rank() as f64 + 1.0);
                let before = verify_parameters_equal(&vs, m).map_err(|e| e.to_string());
                broadcast_parameters(&vs, m).expect("broadcast");
                let after = verify_parameters_equal(&vs, m).map_err(|e| e.to_string());
                let a = Vec::<f32>::try_from(vs.variables()["a"].flatten(0, -1)).expect("f32");
                (before, after, a)
            });
            for (before, after, a) in results {
                let err = before.expect_err("ranks start different");
                assert!(err.contains("differ from rank 0"), "{err}");
                after.expect("equal after broadcast");
                assert!(a.iter().all(|v| *v == 1.0), "rank 0's values everywhere: {a:?}");
            }
        }
    }

    #[test]
    fn different_variable_names_are_reported_on_every_rank() {
        let results = LocalGroup::run(2, |m| {
            let vs = store(0.0);
            if m.rank() == 1 {
                let _ = vs.root().var("extra", &[1], Init::Const(0.0));
            }
            broadcast_parameters(&vs, m).map_err(|e| e.to_string())
        });
        for got in results {
            let err = got.expect_err("names differ");
            assert!(err.contains("variable names"), "{err}");
        }
    }
}
