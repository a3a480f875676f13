//! Collective communication among the ranks of a data-parallel job.
//!
//! [`Collective`] is the one interface the losses and the gradient sync use;
//! backends: [`Solo`] (a world of one), `Mpi` (OpenMPI, CPU tensors, behind the
//! `mpi` cargo feature), `Nccl` (CUDA tensors, behind the `nccl` feature;
//! bootstrapped over MPI or the TCP [`rendezvous`]) and the in-process thread
//! group in `local`.
//! [`Dist`] is who this process is (rank, world size, local rank), read from the
//! environment variables the usual launchers set.

pub mod collective;
pub mod local;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
pub mod rendezvous;
mod solo;
pub mod world;

#[cfg(feature = "mpi")]
pub use self::mpi::Mpi;
#[cfg(feature = "nccl")]
pub use self::nccl::{new_unique_id, Nccl, UNIQUE_ID_BYTES};
pub use collective::{Collective, DistError};
pub use solo::Solo;
pub use world::Dist;

/// The collective for `dist`: [`Solo`] for a world of one. With the `nccl`
/// feature and CUDA present, NCCL on `cuda:(local_rank mod devices)`,
/// bootstrapped over MPI when the process was started by an MPI launcher (and
/// the `mpi` feature is on), else over the TCP rendezvous at
/// `MASTER_ADDR:MASTER_PORT`. Otherwise MPI when started by an MPI launcher
/// (`mpirun`, `srun --mpi=pmix`).
pub fn connect(dist: &Dist) -> Result<Box<dyn Collective>, DistError> {
    if dist.world_size == 1 {
        return Ok(Box::new(Solo));
    }
    let under_mpi = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    #[cfg(feature = "nccl")]
    if tch::Cuda::is_available() {
        // More local ranks than GPUs share them round-robin (NCCL itself refuses
        // two ranks of one communicator on one GPU, with a clear error).
        let device = dist.local_rank % (tch::Cuda::device_count().max(1) as usize);
        #[cfg(feature = "mpi")]
        if under_mpi {
            let mpi = Mpi::init()?;
            check_mpi_matches(&mpi, dist)?;
            return Ok(Box::new(Nccl::over_collective(Box::new(mpi), device)?));
        }
        if std::env::var_os(protocol::env::MASTER_ADDR).is_some() {
            let rendezvous = rendezvous::Rendezvous::from_env()?;
            return Ok(Box::new(Nccl::over_tcp(dist, device, &rendezvous)?));
        }
    }
    #[cfg(feature = "mpi")]
    if under_mpi {
        let mpi = Mpi::init()?;
        check_mpi_matches(&mpi, dist)?;
        return Ok(Box::new(mpi));
    }
    Err(DistError::Backend {
        backend: if under_mpi { "mpi" } else { "none" },
        reason: format!(
            "world size {} but no communication backend: start the workers with `ferroclip launch --backend mpi` or mpirun{}{}",
            dist.world_size,
            if cfg!(feature = "mpi") { "" } else { " (and build with the `mpi` feature)" },
            if cfg!(feature = "nccl") {
                ", or on CUDA machines with `ferroclip launch --backend nccl`"
            } else {
                ""
            }
        ),
    })
}

/// MPI's view of the world must be the environment's.
#[cfg(feature = "mpi")]
fn check_mpi_matches(mpi: &Mpi, dist: &Dist) -> Result<(), DistError> {
    if mpi.rank() != dist.rank || mpi.world_size() != dist.world_size {
        return Err(DistError::Backend {
            backend: "mpi",
            reason: format!(
                "MPI says rank {}/{}, the environment says {}/{}",
                mpi.rank(),
                mpi.world_size(),
                dist.rank,
                dist.world_size
            ),
        });
    }
    Ok(())
}
