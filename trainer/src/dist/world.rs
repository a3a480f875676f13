//! Who this process is in the job ([`Dist`]: rank, world size, local rank), read from the
//! environment variables the usual launchers set.

use protocol::env;
use tch::Device;

use super::collective::DistError;

/// Who this process is in the job: decides who logs and saves, offsets seeds
/// and picks the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dist {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes in the job.
    pub world_size: usize,
    /// Rank among the processes on this node (selects the GPU).
    pub local_rank: usize,
}

/// One launcher's naming of (rank, world size, local rank).
struct Convention {
    rank: &'static str,
    size: &'static str,
    /// Variables tried in order for the local rank; when none is set the local
    /// rank is taken equal to the rank (right on a single node).
    local: &'static [&'static str],
}

/// Checked in this order; the first convention whose rank and size are both set wins.
/// OMPI comes before SLURM because `mpirun` inside an allocation sees both and
/// only the OMPI values describe the processes it started.
const CONVENTIONS: &[Convention] = &[
    Convention {
        rank: env::RANK,
        size: env::WORLD_SIZE,
        local: &[env::LOCAL_RANK],
    },
    Convention {
        rank: "OMPI_COMM_WORLD_RANK",
        size: "OMPI_COMM_WORLD_SIZE",
        local: &["OMPI_COMM_WORLD_LOCAL_RANK"],
    },
    Convention {
        rank: "PMI_RANK",
        size: "PMI_SIZE",
        local: &["MPI_LOCALRANKID", "PMI_LOCAL_RANK"],
    },
    Convention {
        rank: "SLURM_PROCID",
        size: "SLURM_NTASKS",
        local: &["SLURM_LOCALID"],
    },
];

impl Dist {
    /// A world of one: rank 0 of 1.
    pub fn single() -> Dist {
        Dist {
            rank: 0,
            world_size: 1,
            local_rank: 0,
        }
    }

    /// Reads the process environment (see [`Dist::from_lookup`]).
    pub fn from_env() -> Result<Dist, DistError> {
        Dist::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Discovers rank, world size and local rank through `lookup` (an
    /// environment): `RANK/WORLD_SIZE/LOCAL_RANK`, then `OMPI_COMM_WORLD_*`,
    /// then `PMI_RANK/PMI_SIZE` (local rank from `MPI_LOCALRANKID`), then
    /// `SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID`; the first set with both rank
    /// and size wins. With no set at all this is a world of one. A set with only
    /// one of rank/size, a non-numeric value, a zero world size or a rank or
    /// local rank not below the world size is an error naming the variable.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Dist, DistError> {
        let mut half_set: Option<(&str, &str)> = None;
        for conv in CONVENTIONS {
            match (lookup(conv.rank), lookup(conv.size)) {
                (Some(rank), Some(size)) => return Dist::parse_convention(conv, &rank, &size, lookup),
                (Some(_), None) => half_set = half_set.or(Some((conv.rank, conv.size))),
                (None, Some(_)) => half_set = half_set.or(Some((conv.size, conv.rank))),
                (None, None) => {}
            }
        }
        match half_set {
            Some((present, missing)) => Err(DistError::Env {
                var: missing.to_string(),
                value: String::new(),
                reason: format!("is not set although {present} is; set both or neither"),
            }),
            None => Ok(Dist::single()),
        }
    }

    fn parse_convention(
        conv: &Convention,
        rank: &str,
        size: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Dist, DistError> {
        let world_size = parse_index(conv.size, size)?;
        if world_size == 0 {
            return Err(env_error(conv.size, size, "world size must be at least 1"));
        }
        let rank_value = parse_index(conv.rank, rank)?;
        if rank_value >= world_size {
            return Err(env_error(
                conv.rank,
                rank,
                &format!("rank must be below the world size {world_size} ({})", conv.size),
            ));
        }
        let mut local_rank = rank_value;
        if let Some((var, value)) = conv.local.iter().find_map(|v| lookup(v).map(|x| (*v, x))) {
            local_rank = parse_index(var, &value)?;
            if local_rank >= world_size {
                return Err(env_error(
                    var,
                    &value,
                    &format!("local rank must be below the world size {world_size} ({})", conv.size),
                ));
            }
        }
        Ok(Dist {
            rank: rank_value,
            world_size,
            local_rank,
        })
    }

    /// True on rank 0, the process that logs, evaluates and saves.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// `cuda:local_rank` when CUDA is available, else the CPU.
    pub fn device(&self) -> Device {
        if tch::Cuda::is_available() {
            // Same choice as `connect`: more local ranks than GPUs share them round-robin.
            Device::Cuda(self.local_rank % tch::Cuda::device_count().max(1) as usize)
        } else {
            Device::Cpu
        }
    }
}

fn env_error(var: &str, value: &str, reason: &str) -> DistError {
    DistError::Env {
        var: var.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_index(var: &str, value: &str) -> Result<usize, DistError> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| env_error(var, value, "expected a non-negative integer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn discover(vars: &[(&str, &str)]) -> Result<Dist, DistError> {
        let env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Dist::from_lookup(&|name| env.get(name).cloned())
    }

    #[test]
    fn empty_environment_is_a_world_of_one() {
        let dist = discover(&[]).expect("empty env");
        assert_eq!(dist, Dist::single());
        assert!(dist.is_main());
    }

    #[test]
    fn torchrun_variables() {
        let dist = discover(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")]).expect("torchrun");
        assert_eq!(
            dist,
            Dist {
                rank: 3,
                world_size: 8,
                local_rank: 1
            }
        );
        assert!(!dist.is_main());
    }

    #[test]
    fn openmpi_variables() {
        let dist = discover(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ])
        .expect("ompi");
        assert_eq!(
            dist,
            Dist {
                rank: 1,
                world_size: 2,
                local_rank: 1
            }
        );
    }

    #[test]
    fn pmi_local_rank_from_mpich_or_defaults_to_rank() {
        let with_local = discover(&[("PMI_RANK", "5"), ("PMI_SIZE", "6"), ("MPI_LOCALRANKID", "1")]).expect("pmi");
        assert_eq!(
            with_local,
            Dist {
                rank: 5,
                world_size: 6,
                local_rank: 1
            }
        );
        let without = discover(&[("PMI_RANK", "5"), ("PMI_SIZE", "6")]).expect("pmi");
        assert_eq!(
            without,
            Dist {
                rank: 5,
                world_size: 6,
                local_rank: 5
            }
        );
    }

    #[test]
    fn slurm_variables() {
        let dist = discover(&[("SLURM_PROCID", "9"), ("SLURM_NTASKS", "16"), ("SLURM_LOCALID", "1")]).expect("slurm");
        assert_eq!(
            dist,
            Dist {
                rank: 9,
                world_size: 16,
                local_rank: 1
            }
        );
    }

    #[test]
    fn first_complete_set_wins() {
        // mpirun inside a SLURM allocation: OMPI describes the processes.
        let dist = discover(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "2"),
        ])
        .expect("both");
        assert_eq!(
            dist,
            Dist {
                rank: 2,
                world_size: 3,
                local_rank: 2
            }
        );
        // An incomplete torchrun set does not hide a complete OMPI set.
        let dist = discover(&[
            ("LOCAL_RANK", "0"),
            ("RANK", "1"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ])
        .expect("ompi after half torchrun");
        assert_eq!(dist.world_size, 2);
    }

    fn env_var_of(err: DistError) -> String {
        match err {
            DistError::Env { var, .. } => var,
            other => panic!("expected an Env error, got {other}"),
        }
    }

    #[test]
    fn rank_not_below_world_size_names_the_rank_variable() {
        let err = discover(&[("RANK", "2"), ("WORLD_SIZE", "2")]).expect_err("rank 2 of 2");
        assert!(err.to_string().contains("RANK=\"2\""), "{err}");
        assert_eq!(env_var_of(err), "RANK");
    }

    #[test]
    fn non_numeric_and_zero_values_are_errors() {
        let err = discover(&[("OMPI_COMM_WORLD_RANK", "one"), ("OMPI_COMM_WORLD_SIZE", "2")]).expect_err("non-numeric");
        assert_eq!(env_var_of(err), "OMPI_COMM_WORLD_RANK");
        let err = discover(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "0")]).expect_err("zero world");
        assert_eq!(env_var_of(err), "SLURM_NTASKS");
        let err = discover(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "-1")]).expect_err("negative");
        assert_eq!(env_var_of(err), "LOCAL_RANK");
        let err = discover(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "2")]).expect_err("local too big");
        assert_eq!(env_var_of(err), "LOCAL_RANK");
    }

    #[test]
    fn half_a_set_alone_is_an_error_naming_the_missing_variable() {
        let err = discover(&[("RANK", "1")]).expect_err("rank without size");
        assert_eq!(env_var_of(err), "WORLD_SIZE");
        let err = discover(&[("PMI_SIZE", "4")]).expect_err("size without rank");
        assert_eq!(env_var_of(err), "PMI_RANK");
    }
}
