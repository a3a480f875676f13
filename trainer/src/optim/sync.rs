//! The gradient exchange of data parallelism: [`GradSync`] sums every rank's gradients so
//! that each rank holds the gradient of the global loss.
//!
//! Scale convention (see [`crate::loss::global`]): each rank's loss is its share of the
//! global-batch loss, already divided by the global batch size, so the gradient of the
//! global loss is the plain SUM of the ranks' gradients.

use std::time::Instant;

use tch::Tensor;

use super::Gradients;
use crate::dist::{Collective, DistError};

/// PyTorch DDP's default bucket size: large enough that per-message latency is
/// amortised, small enough that the flat copy stays cheap.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Sums gradients over ranks, in buckets of about `bucket_bytes`.
#[derive(Debug, Clone)]
pub struct GradSync {
    bucket_bytes: usize,
    /// The dtype gradients travel in (`optim.grad_reduce = "bf16"`: half the bytes on the
    /// wire; summed in bf16, cast back to the gradients' dtype). `None`: their own dtype.
    wire: Option<tch::Kind>,
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
            wire: None,
        }
    }

    /// Gradients cross the wire as `kind` (bf16: half the bytes of f32, with bf16's 8-bit
    /// mantissa in the sums); the master weights and the optimizer stay fp32. A backend
    /// without that dtype refuses it at the first reduction (MPI has no bf16 sum; NCCL does).
    pub fn on_the_wire(mut self, kind: tch::Kind) -> Self {
        self.wire = Some(kind);
        self
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
                reduce_bucket(grads, &bucket, scale, self.wire, coll)?;
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

fn reduce_bucket(
    grads: &mut [Tensor],
    bucket: &[usize],
    scale: f64,
    wire: Option<tch::Kind>,
    coll: &dyn Collective,
) -> Result<(), DistError> {
    tch::no_grad(|| {
        if let ([only], None) = (bucket, wire) {
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
        if let Some(kind) = wire {
            let dtype = flat.kind();
            let mut on_wire = flat.to_kind(kind);
            coll.all_reduce_sum_(&mut on_wire)?;
            flat = on_wire.to_kind(dtype);
        } else {
            coll.all_reduce_sum_(&mut flat)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::local::LocalGroup;
    use crate::optim::{AdamW, OptimConfig};
    use tch::nn::Init;
    use tch::Kind;
    use tch::{nn, Device};

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
        for (index, (name, p)) in crate::train::ddp::sorted_variables(vs).into_iter().enumerate() {
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
    fn gradients_may_travel_as_bf16() {
        // Values bf16 cannot hold exactly (1 + 2^-10): the bf16 sum rounds them, the fp32
        // sum does not; both land within bf16's precision of each other.
        let results = LocalGroup::run(2, |m| {
            let exact = 1.0 + 2f64.powi(-10);
            let make = || {
                Gradients::from_tensors(vec![Tensor::full(
                    [4],
                    exact * (m.rank() + 1) as f64,
                    (Kind::Float, Device::Cpu),
                )])
            };
            let (mut fp32, mut bf16) = (make(), make());
            GradSync::default().all_reduce(&mut fp32, 1.0, m).expect("fp32");
            let sync = GradSync::default().on_the_wire(Kind::BFloat16);
            sync.all_reduce(&mut bf16, 1.0, m).expect("bf16");
            let value = |g: &Gradients| g.tensors()[0].double_value(&[0]);
            (value(&fp32), value(&bf16), bf16.tensors()[0].kind())
        });
        for (fp32, bf16, kind) in results {
            assert_eq!(kind, Kind::Float, "back in the gradients' dtype");
            assert!((fp32 - 3.0 * (1.0 + 2f64.powi(-10))).abs() < 1e-6, "{fp32}");
            assert_ne!(fp32, bf16, "the bf16 path must round");
            assert!((fp32 - bf16).abs() <= 3.0 * 2f64.powi(-8), "{fp32} vs {bf16}");
        }
    }
}
