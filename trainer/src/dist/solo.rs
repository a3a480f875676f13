//! The world of one: every collective is an identity (or a copy).

use tch::Tensor;

use super::{Collective, DistError};

/// A single process: rank 0 of 1. Works on any device.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        // A fresh tensor without autograd history, like the other backends return.
        Ok(t.detach().copy())
    }

    fn all_reduce_sum_(&self, _t: &mut Tensor) -> Result<(), DistError> {
        Ok(())
    }

    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError> {
        if t.dim() == 0 {
            return Err(DistError::Tensor {
                op: "reduce_scatter_sum",
                reason: "expected a tensor with a leading block dimension, got a scalar".into(),
            });
        }
        Ok(t.detach().copy())
    }

    fn broadcast_(&self, _t: &mut Tensor, root: usize) -> Result<(), DistError> {
        if root != 0 {
            return Err(DistError::Tensor {
                op: "broadcast_",
                reason: format!("root {root} is not a rank of a world of one"),
            });
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }

    fn ring_pass(&self, t: &Tensor) -> Result<Tensor, DistError> {
        Ok(t.detach().copy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn solo_collectives_are_identities_on_fresh_tensors() {
        let solo = Solo;
        assert_eq!((solo.rank(), solo.world_size()), (0, 1));
        let x = Tensor::arange(6, (Kind::Float, tch::Device::Cpu))
            .view([3, 2])
            .set_requires_grad(true);

        let gathered = solo.all_gather(&x).expect("all_gather");
        assert_eq!(gathered.size(), vec![3, 2]);
        assert!(!gathered.requires_grad());
        assert_ne!(gathered.data_ptr(), x.data_ptr(), "all_gather must not alias its input");
        assert_eq!(
            f64::try_from((&gathered - &x.detach()).abs().max()).expect("scalar"),
            0.0
        );

        let block = solo.reduce_scatter_sum(&x).expect("reduce_scatter_sum");
        assert_eq!(block.size(), vec![3, 2]);
        assert_eq!(f64::try_from((&block - &x.detach()).abs().max()).expect("scalar"), 0.0);

        let mut y = Tensor::from_slice(&[1.5f32, -2.0]);
        solo.all_reduce_sum_(&mut y).expect("all_reduce");
        solo.broadcast_(&mut y, 0).expect("broadcast");
        assert_eq!(Vec::<f32>::try_from(&y).expect("vec"), vec![1.5, -2.0]);
        assert!(solo.broadcast_(&mut y, 1).is_err());
        assert!(solo.reduce_scatter_sum(&Tensor::from(1.0f32)).is_err());
        solo.barrier().expect("barrier");
    }
}
