//! Data parallelism's start: the same parameters on every rank ([`broadcast_parameters`],
//! [`verify_parameters_equal`]). The gradient exchange after every backward pass is
//! [`crate::optim::sync::GradSync`].

use tch::{nn, Device, Tensor};

use crate::dist::{Collective, DistError};

/// The store's variables sorted by name: the same order on every rank.
pub(crate) fn sorted_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
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
    use tch::nn::Init;

    /// Three parameters of different sizes; value `fill` everywhere.
    fn store(fill: f64) -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = root.var("a", &[3, 4], Init::Const(fill));
        let _ = root.var("b", &[5], Init::Const(fill));
        let _ = root.var("c", &[2, 2, 2], Init::Const(fill));
        vs
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
