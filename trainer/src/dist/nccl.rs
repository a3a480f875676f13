//! NCCL collectives over CUDA tensors, through cudarc with the NCCL and CUDA
//! driver libraries loaded at run time (so this compiles, and the binary
//! starts, on machines without CUDA).
//!
//! Verified on one H200 (2026-11-25, `scripts/gpu_check.sh`, docs/benchmarks.md):
//! a world of one runs the global ClipLoss and the train loop through NCCL, and
//! two ranks on the one GPU are refused by NCCL (as expected). A world of two
//! GPUs has not been run yet.
//!
//! Design choices:
//! - One communicator per process, on CUDA device `device` (normally the
//!   local rank), made current on the calling thread through its primary
//!   context (what `cudaSetDevice` does, and what libtorch uses too).
//! - The unique id is made by rank 0 and handed to the others either over any
//!   CPU [`Collective`] (MPI when the job runs under mpirun) or over the TCP
//!   [`Rendezvous`] at `MASTER_ADDR:MASTER_PORT`.
//! - Streams: every operation is enqueued on the CUDA null stream of the
//!   device, which is libtorch's default ("current") stream as long as nothing
//!   in the process switches streams (ferroclip never does). Collectives are
//!   thus ordered after the kernels that produced their inputs and before the
//!   ones that read their outputs, with no host synchronisation; outputs are
//!   allocated by libtorch's caching allocator on that same stream, so they are
//!   not reused early. Only [`Collective::barrier`] waits on the host.
//! - Determinism: NCCL's sums are fixed for a fixed world size, topology and
//!   algorithm choice; pin `NCCL_ALGO=Ring` (and `NCCL_PROTO=Simple`) when
//!   bitwise run-to-run equality matters across message sizes.
//! - The shared library is found by cudarc under the names `libnccl.so`,
//!   `libnccl.so.1`, ... — not `libnccl.so.2`, which is the only name the
//!   `nvidia-nccl` wheel ships. Put a folder holding a `libnccl.so` symlink to
//!   it on `LD_LIBRARY_PATH` (`scripts/gpu_check.sh` does).

use std::ffi::{c_void, CStr};
use std::sync::{Arc, Mutex};

use cudarc::driver::CudaContext;
use cudarc::nccl::sys::{self, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};
use tch::{Device, Kind, Tensor};

use super::rendezvous::Rendezvous;
use super::{Collective, Dist, DistError};

/// Bytes in an NCCL unique id (`NCCL_UNIQUE_ID_BYTES`).
pub const UNIQUE_ID_BYTES: usize = 128;

fn backend_error(reason: String) -> DistError {
    DistError::Backend {
        backend: "nccl",
        reason,
    }
}

fn tensor_error(op: &'static str, reason: String) -> DistError {
    DistError::Tensor { op, reason }
}

/// NCCL's own text for a result code.
fn describe(code: ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
    let text = unsafe { sys::ncclGetErrorString(code) };
    if text.is_null() {
        format!("{code:?}")
    } else {
        // SAFETY: non-null, NUL-terminated and static (see above).
        format!("{code:?}: {}", unsafe { CStr::from_ptr(text) }.to_string_lossy())
    }
}

/// Fails with a clear message instead of cudarc's panic when a library is missing.
fn require_libraries() -> Result<(), DistError> {
    // SAFETY: only tries to dlopen the candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err(backend_error(
            "cannot load libnccl.so: put a folder holding libnccl.so (e.g. a symlink to torch's \
             site-packages/nvidia/nccl/lib/libnccl.so.2) on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    // SAFETY: as above, for the CUDA driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(backend_error("cannot load the CUDA driver library libcuda.so".into()));
    }
    Ok(())
}

/// A fresh NCCL unique id (made by rank 0, then handed to every rank).
pub fn new_unique_id() -> Result<[u8; UNIQUE_ID_BYTES], DistError> {
    require_libraries()?;
    let id = cudarc::nccl::result::get_uniqueid()
        .map_err(|e| backend_error(format!("ncclGetUniqueId failed: {}", describe(e.0))))?;
    Ok(id.internal.map(|c| c as u8))
}

/// The communicator handle; NCCL does not allow two threads to use one
/// communicator at once, so it lives behind a mutex.
struct Comm(ncclComm_t);

// SAFETY: an NCCL communicator may be used from any thread as long as calls do
// not overlap, which the `Mutex<Comm>` in `Nccl` guarantees.
unsafe impl Send for Comm {}

/// An NCCL communicator as a [`Collective`] over contiguous-or-not CUDA
/// tensors of kind f32, f64, f16, bf16, i64, i32, u8 or i8 on this process's
/// device. Errors, not panics, on CPU tensors or tensors on another device.
pub struct Nccl {
    comm: Mutex<Comm>,
    rank: usize,
    world_size: usize,
    /// CUDA ordinal of the communicator's device.
    device: usize,
    /// Keeps the device's primary context retained; bound to each calling thread.
    context: Arc<CudaContext>,
    /// The bootstrap collective (MPI), kept alive so it is finalised after NCCL.
    _bootstrap: Option<Box<dyn Collective>>,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("device", &self.device)
            .finish()
    }
}

impl Nccl {
    /// Joins `dist`'s job on CUDA device `device`, the unique id coming from
    /// rank 0 over the TCP `rendezvous`.
    pub fn over_tcp(dist: &Dist, device: usize, rendezvous: &Rendezvous) -> Result<Nccl, DistError> {
        let id = if dist.rank == 0 {
            let id = new_unique_id()?;
            rendezvous.broadcast_from_rank0(0, dist.world_size, Some(&id))?;
            id
        } else {
            let bytes = rendezvous.broadcast_from_rank0(dist.rank, dist.world_size, None)?;
            <[u8; UNIQUE_ID_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
                backend_error(format!(
                    "rank 0 sent a unique id of {} bytes, expected {UNIQUE_ID_BYTES}",
                    bytes.len()
                ))
            })?
        };
        Nccl::with_unique_id(dist.rank, dist.world_size, device, &id, None)
    }

    /// Joins the job of the CPU collective `bootstrap` (e.g. MPI) on CUDA
    /// device `device`: rank 0's unique id is broadcast over `bootstrap`, which
    /// is kept (and dropped after the communicator).
    pub fn over_collective(bootstrap: Box<dyn Collective>, device: usize) -> Result<Nccl, DistError> {
        let (rank, world_size) = (bootstrap.rank(), bootstrap.world_size());
        let mut id = if rank == 0 {
            Tensor::from_slice(&new_unique_id()?)
        } else {
            Tensor::zeros([UNIQUE_ID_BYTES as i64], (Kind::Uint8, Device::Cpu))
        };
        bootstrap.broadcast_(&mut id, 0)?;
        let received = Vec::<u8>::try_from(&id)
            .map_err(|e| backend_error(format!("rank {rank}: reading the broadcast unique id: {e}")))?;
        let bytes = <[u8; UNIQUE_ID_BYTES]>::try_from(received.as_slice())
            .map_err(|_| backend_error(format!("rank {rank}: unique id of {} bytes", received.len())))?;
        Nccl::with_unique_id(rank, world_size, device, &bytes, Some(bootstrap))
    }

    /// `ncclCommInitRank` on device `device` with the id every rank received.
    /// Blocks until all `world_size` ranks have called it.
    pub fn with_unique_id(
        rank: usize,
        world_size: usize,
        device: usize,
        id: &[u8; UNIQUE_ID_BYTES],
        bootstrap: Option<Box<dyn Collective>>,
    ) -> Result<Nccl, DistError> {
        require_libraries()?;
        let visible = tch::Cuda::device_count().max(0) as usize;
        if device >= visible {
            return Err(backend_error(format!(
                "rank {rank}: CUDA device {device} requested but {visible} visible"
            )));
        }
        let (nranks, rank_c) = match (i32::try_from(world_size), i32::try_from(rank)) {
            (Ok(w), Ok(r)) if r < w => (w, r),
            _ => {
                return Err(backend_error(format!(
                    "rank {rank} of {world_size} is not a valid NCCL rank"
                )))
            }
        };
        let context = CudaContext::new(device)
            .map_err(|e| backend_error(format!("rank {rank}: cannot open CUDA device {device}: {e}")))?;
        let unique_id = ncclUniqueId {
            internal: id.map(|b| b as std::ffi::c_char),
        };
        let mut comm: ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; the device's context is current on this thread.
        unsafe { cudarc::nccl::result::comm_init_rank(&mut comm, nranks, unique_id, rank_c) }.map_err(|e| {
            backend_error(format!(
                "rank {rank}: ncclCommInitRank on cuda:{device} failed: {} (two ranks on one GPU are \
                 refused by NCCL; NCCL_DEBUG=INFO says more)",
                describe(e.0)
            ))
        })?;
        Ok(Nccl {
            comm: Mutex::new(Comm(comm)),
            rank,
            world_size,
            device,
            context,
            _bootstrap: bootstrap,
        })
    }

    /// The CUDA ordinal this communicator runs on.
    pub fn device(&self) -> Device {
        Device::Cuda(self.device)
    }

    /// Runs one NCCL call with the communicator locked and the device current.
    fn call(&self, op: &'static str, f: impl FnOnce(ncclComm_t) -> ncclResult_t) -> Result<(), DistError> {
        let comm = self
            .comm
            .lock()
            .map_err(|_| backend_error("an earlier NCCL call panicked".into()))?;
        self.context
            .bind_to_thread()
            .map_err(|e| backend_error(format!("{op}: cannot make cuda:{} current: {e}", self.device)))?;
        let code = f(comm.0);
        if code == ncclResult_t::ncclSuccess {
            return Ok(());
        }
        // SAFETY: `comm.0` is a live communicator; the returned text is owned by NCCL.
        let last = unsafe { sys::ncclGetLastError(comm.0) };
        let detail = if last.is_null() {
            String::new()
        } else {
            // SAFETY: non-null NUL-terminated string owned by NCCL, read before the next call.
            format!(" ({})", unsafe { CStr::from_ptr(last) }.to_string_lossy())
        };
        Err(backend_error(format!("{op} failed: {}{detail}", describe(code))))
    }

    /// Checks that `t` lives on this communicator's device and returns its NCCL dtype.
    fn check(&self, op: &'static str, t: &Tensor) -> Result<ncclDataType_t, DistError> {
        match t.device() {
            Device::Cuda(i) if i == self.device => {}
            other => {
                return Err(tensor_error(
                    op,
                    format!(
                        "the NCCL backend takes tensors on cuda:{}, got one on {other:?}",
                        self.device
                    ),
                ))
            }
        }
        datatype(op, t.kind())
    }

    /// Applies `f(comm, pointer, count, dtype)` to `t`'s storage in place; a
    /// non-contiguous `t` is worked on through a contiguous copy written back.
    fn in_place(
        &self,
        op: &'static str,
        t: &mut Tensor,
        f: impl FnOnce(ncclComm_t, *mut c_void, usize, ncclDataType_t) -> ncclResult_t,
    ) -> Result<(), DistError> {
        let dtype = self.check(op, t)?;
        let was_contiguous = t.is_contiguous();
        let work = if was_contiguous {
            t.shallow_clone()
        } else {
            t.contiguous()
        };
        let numel = work.numel();
        if numel > 0 {
            let ptr = work.data_ptr();
            // NCCL reads and writes `work` on the null stream, after libtorch's kernels on it.
            self.call(op, |comm| f(comm, ptr, numel, dtype))?;
        }
        if !was_contiguous {
            t.copy_(&work);
        }
        Ok(())
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if let Ok(comm) = self.comm.get_mut() {
            if !comm.0.is_null() && self.context.bind_to_thread().is_ok() {
                // SAFETY: the communicator is live and no other call can be in flight (`&mut self`).
                // A failure here cannot be reported from drop; the process is ending anyway.
                let _ = unsafe { cudarc::nccl::result::comm_destroy(comm.0) };
                comm.0 = std::ptr::null_mut();
            }
        }
    }
}

/// NCCL's datatype for a tensor kind.
fn datatype(op: &'static str, kind: Kind) -> Result<ncclDataType_t, DistError> {
    Ok(match kind {
        Kind::Float => ncclDataType_t::ncclFloat32,
        Kind::Double => ncclDataType_t::ncclFloat64,
        Kind::Half => ncclDataType_t::ncclFloat16,
        Kind::BFloat16 => ncclDataType_t::ncclBfloat16,
        Kind::Int64 => ncclDataType_t::ncclInt64,
        Kind::Int => ncclDataType_t::ncclInt32,
        Kind::Uint8 => ncclDataType_t::ncclUint8,
        Kind::Int8 => ncclDataType_t::ncclInt8,
        other => {
            return Err(tensor_error(
                op,
                format!("dtype {other:?} is not supported (f32, f64, f16, bf16, i64, i32, u8, i8)"),
            ))
        }
    })
}

/// The CUDA null stream: libtorch's default stream (see the module comment).
fn torch_default_stream() -> sys::cudaStream_t {
    std::ptr::null_mut()
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        const OP: &str = "all_gather";
        let dtype = self.check(OP, t)?;
        let (send, shape) = super::collective::gather_input(OP, t, self.world_size)?;
        let gathered = Tensor::empty(shape.as_slice(), (send.kind(), send.device()));
        let per_rank = send.numel();
        if per_rank > 0 {
            // SAFETY: `send` is contiguous with `per_rank` elements on this device;
            // `gathered` is fresh, contiguous, world_size·per_rank elements of the same
            // dtype. Both stay alive until the kernels that use them are enqueued on the
            // stream libtorch also uses, so the caching allocator cannot hand them out early.
            self.call(OP, |comm| unsafe {
                sys::ncclAllGather(
                    send.data_ptr(),
                    gathered.data_ptr(),
                    per_rank,
                    dtype,
                    comm,
                    torch_default_stream(),
                )
            })?;
        }
        Ok(gathered)
    }

    fn all_reduce_sum_(&self, t: &mut Tensor) -> Result<(), DistError> {
        self.in_place("all_reduce_sum_", t, |comm, ptr, n, dtype| {
            // SAFETY: `ptr` points at `n` contiguous elements of `dtype` on this device
            // (see `in_place`); in-place all-reduce is allowed by NCCL (send == recv).
            unsafe { sys::ncclAllReduce(ptr, ptr, n, dtype, ncclRedOp_t::ncclSum, comm, torch_default_stream()) }
        })
    }

    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError> {
        const OP: &str = "reduce_scatter_sum";
        let dtype = self.check(OP, t)?;
        let shape = super::collective::scatter_block_shape(OP, &t.size(), self.world_size)?;
        let send = t.detach().contiguous();
        let block = Tensor::empty(shape.as_slice(), (send.kind(), send.device()));
        let per_rank = block.numel();
        if per_rank > 0 {
            // SAFETY: `send` is contiguous with world_size·per_rank elements, `block` fresh
            // and contiguous with per_rank elements, same dtype and device; both outlive
            // the enqueue (see all_gather).
            self.call(OP, |comm| unsafe {
                sys::ncclReduceScatter(
                    send.data_ptr(),
                    block.data_ptr(),
                    per_rank,
                    dtype,
                    ncclRedOp_t::ncclSum,
                    comm,
                    torch_default_stream(),
                )
            })?;
        }
        Ok(block)
    }

    fn broadcast_(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        const OP: &str = "broadcast_";
        super::collective::check_root(OP, root, self.world_size)?;
        let root = root as i32;
        self.in_place(OP, t, |comm, ptr, n, dtype| {
            // SAFETY: `ptr` points at `n` contiguous elements of `dtype` on this device.
            unsafe { sys::ncclBroadcast(ptr, ptr, n, dtype, root, comm, torch_default_stream()) }
        })
    }

    fn barrier(&self) -> Result<(), DistError> {
        // NCCL has no barrier: a one-element all-reduce, then wait for it on the host.
        let mut token = Tensor::zeros([1], (Kind::Float, self.device()));
        self.all_reduce_sum_(&mut token)?;
        tch::Cuda::synchronize(self.device as i64);
        Ok(())
    }

    fn ring_pass(&self, t: &Tensor) -> Result<Tensor, DistError> {
        const OP: &str = "ring_pass";
        let dtype = self.check(OP, t)?;
        let send = t.detach().contiguous();
        let received = Tensor::empty(send.size().as_slice(), (send.kind(), send.device()));
        let n = send.numel();
        if n > 0 {
            let world = self.world_size as i32;
            let (next, previous) = ((self.rank as i32 + 1) % world, (self.rank as i32 + world - 1) % world);
            // SAFETY: `send` is contiguous with `n` elements on this device, `received` fresh
            // and contiguous with `n` elements of the same dtype (every rank passes the same
            // shape); both outlive the enqueue (see all_gather). The send and the receive
            // are one group, so neither waits for the other to be posted first.
            self.call(OP, |comm| unsafe {
                let started = sys::ncclGroupStart();
                if started != ncclResult_t::ncclSuccess {
                    return started;
                }
                let sent = sys::ncclSend(send.data_ptr(), n, dtype, next, comm, torch_default_stream());
                let got = sys::ncclRecv(received.data_ptr(), n, dtype, previous, comm, torch_default_stream());
                let ended = sys::ncclGroupEnd();
                [sent, got, ended]
                    .into_iter()
                    .find(|code| *code != ncclResult_t::ncclSuccess)
                    .unwrap_or(ncclResult_t::ncclSuccess)
            })?;
        }
        Ok(received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_kind_maps_and_others_are_refused() {
        for (kind, dtype) in [
            (Kind::Float, ncclDataType_t::ncclFloat32),
            (Kind::Double, ncclDataType_t::ncclFloat64),
            (Kind::Half, ncclDataType_t::ncclFloat16),
            (Kind::BFloat16, ncclDataType_t::ncclBfloat16),
            (Kind::Int64, ncclDataType_t::ncclInt64),
            (Kind::Int, ncclDataType_t::ncclInt32),
            (Kind::Uint8, ncclDataType_t::ncclUint8),
            (Kind::Int8, ncclDataType_t::ncclInt8),
        ] {
            assert_eq!(datatype("t", kind).expect("supported"), dtype);
        }
        let err = datatype("all_gather", Kind::Bool).expect_err("bool");
        assert!(
            err.to_string().contains("all_gather") && err.to_string().contains("Bool"),
            "{err}"
        );
    }

    #[test]
    fn missing_cuda_is_an_error_not_a_panic() {
        // On a machine without a GPU (CI), joining fails with a message; on a GPU
        // machine with one device, asking for device 4096 fails the same way.
        let id = [0u8; UNIQUE_ID_BYTES];
        let err = Nccl::with_unique_id(0, 1, 4096, &id, None).expect_err("no such device");
        assert!(matches!(err, DistError::Backend { backend: "nccl", .. }), "{err}");
    }
}
