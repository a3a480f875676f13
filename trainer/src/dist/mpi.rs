//! OpenMPI collectives over contiguous CPU tensors, without copies: MPI reads
//! and writes the tensors' own storage.

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use mpi::datatype::Equivalence;
use mpi::environment::{Threading, Universe};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::Communicator;
use tch::{Device, Kind, Tensor};

use super::{Collective, DistError};

/// The largest element count one MPI call takes (counts are C ints); longer
/// element-wise operations run in chunks of this size.
const MAX_COUNT: usize = i32::MAX as usize;

/// The MPI world (`MPI_COMM_WORLD`) as a [`Collective`] over CPU tensors of kind
/// f32, f64, i64, i32 or u8. MPI is finalised when this value is dropped, which
/// should happen on the thread that called [`Mpi::init`].
pub struct Mpi {
    /// Keeps MPI initialised; its drop calls `MPI_Finalize`.
    universe: Universe,
    rank: usize,
    world_size: usize,
    /// MPI is initialised with `MPI_THREAD_SERIALIZED`: calls may come from any
    /// thread but never two at once, which this lock guarantees.
    serialize: Mutex<()>,
    /// The library's `MPI_IN_PLACE` sentinel, when known (see [`in_place_sentinel`]).
    in_place: Option<usize>,
}

// SAFETY: the raw communicator inside `universe` is a handle that MPI lets any
// thread use under MPI_THREAD_SERIALIZED (checked in `init`), provided calls do
// not overlap; every MPI call made through `Mpi` holds `serialize`.
unsafe impl Send for Mpi {}
// SAFETY: as above; `&Mpi` only reaches MPI through methods that hold `serialize`.
unsafe impl Sync for Mpi {}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}

fn backend_error(reason: String) -> DistError {
    DistError::Backend { backend: "mpi", reason }
}

fn tensor_error(op: &'static str, reason: String) -> DistError {
    DistError::Tensor { op, reason }
}

/// Turns an MPI return code into a `DistError` with MPI's own message.
fn check(op: &'static str, code: c_int) -> Result<(), DistError> {
    if code == ffi::MPI_SUCCESS as c_int {
        return Ok(());
    }
    let mut text = vec![0u8; ffi::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: `text` holds MPI_MAX_ERROR_STRING bytes plus one, as MPI_Error_string requires.
    let described = unsafe { ffi::MPI_Error_string(code, text.as_mut_ptr().cast(), &mut len) };
    let message = if described == ffi::MPI_SUCCESS as c_int {
        String::from_utf8_lossy(&text[..len.clamp(0, text.len() as c_int) as usize]).into_owned()
    } else {
        format!("error code {code}")
    };
    Err(backend_error(format!("{op} failed: {message}")))
}

/// `MPI_IN_PLACE` is a macro (an address that is never a real buffer) that
/// mpi-sys does not export, and its value differs between the two MPI families:
/// `(void*)1` in Open MPI, `(void*)-1` in MPICH and its derivatives. Reads the
/// library's version string; `None` for any other library, where all-reduce
/// goes through a scratch buffer instead.
fn in_place_sentinel() -> Option<usize> {
    let mut text = vec![0u8; ffi::MPI_MAX_LIBRARY_VERSION_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: `text` holds MPI_MAX_LIBRARY_VERSION_STRING bytes plus one, as required.
    let code = unsafe { ffi::MPI_Get_library_version(text.as_mut_ptr().cast(), &mut len) };
    if code != ffi::MPI_SUCCESS as c_int {
        return None;
    }
    let version = String::from_utf8_lossy(&text[..len.clamp(0, text.len() as c_int) as usize]).into_owned();
    if version.contains("Open MPI") {
        Some(1)
    } else if ["MPICH", "Intel(R) MPI", "MVAPICH", "CRAY MPICH"]
        .iter()
        .any(|family| version.contains(family))
    {
        Some(usize::MAX)
    } else {
        None
    }
}

/// The MPI datatype of a tensor kind this backend carries.
fn datatype(op: &'static str, kind: Kind) -> Result<ffi::MPI_Datatype, DistError> {
    Ok(match kind {
        Kind::Float => f32::equivalent_datatype().as_raw(),
        Kind::Double => f64::equivalent_datatype().as_raw(),
        Kind::Int64 => i64::equivalent_datatype().as_raw(),
        Kind::Int => i32::equivalent_datatype().as_raw(),
        Kind::Uint8 => u8::equivalent_datatype().as_raw(),
        other => {
            return Err(tensor_error(
                op,
                format!("dtype {other:?} is not supported (f32, f64, i64, i32, u8)"),
            ))
        }
    })
}

fn require_cpu(op: &'static str, t: &Tensor) -> Result<(), DistError> {
    match t.device() {
        Device::Cpu => Ok(()),
        other => Err(tensor_error(
            op,
            format!("the MPI backend takes CPU tensors, got one on {other:?}"),
        )),
    }
}

fn count(op: &'static str, n: usize) -> Result<c_int, DistError> {
    c_int::try_from(n).map_err(|_| tensor_error(op, format!("{n} elements per rank exceed MPI's count limit")))
}

/// Dimensions a shape signature holds; tensors of more dimensions compare by their element
/// count in the last slot.
const SIGNATURE_DIMS: usize = 8;
/// i64s of a shape signature: dimensions, kind, the sizes (padded), the element count.
const SIGNATURE_LEN: usize = SIGNATURE_DIMS + 3;

/// A tensor's shape and kind as fixed-size integers, for comparing across ranks.
fn shape_signature(t: &Tensor) -> [i64; SIGNATURE_LEN] {
    let mut signature = [0i64; SIGNATURE_LEN];
    let size = t.size();
    signature[0] = size.len() as i64;
    signature[1] = kind_code(t.kind());
    for (slot, dim) in signature[2..2 + SIGNATURE_DIMS].iter_mut().zip(&size) {
        *slot = *dim;
    }
    signature[SIGNATURE_LEN - 1] = t.numel() as i64;
    signature
}

/// A stable number per kind ([`datatype`] accepts only these).
fn kind_code(kind: Kind) -> i64 {
    match kind {
        Kind::Float => 1,
        Kind::Double => 2,
        Kind::Int64 => 3,
        Kind::Int => 4,
        Kind::Uint8 => 5,
        _ => 0,
    }
}

/// The signature as `(4, 512) Float`.
fn describe_signature(signature: &[i64]) -> String {
    let dims = (signature[0].max(0) as usize).min(SIGNATURE_DIMS);
    let sizes: Vec<String> = signature[2..2 + dims].iter().map(i64::to_string).collect();
    let kind = match signature[1] {
        1 => "f32",
        2 => "f64",
        3 => "i64",
        4 => "i32",
        5 => "u8",
        _ => "other",
    };
    format!("({}) {kind}", sizes.join(", "))
}

/// `None` when every rank's signature equals rank 0's; else which ranks differ, and how.
fn disagreement(signatures: &[&[i64]]) -> Option<String> {
    let first = signatures[0];
    let odd: Vec<String> = signatures
        .iter()
        .enumerate()
        .filter(|(_, s)| *s != &first)
        .map(|(rank, s)| format!("rank {rank} passed {}", describe_signature(s)))
        .collect();
    (!odd.is_empty()).then(|| {
        format!(
            "ranks disagree on the tensor: rank 0 passed {} but {}",
            describe_signature(first),
            odd.join(", ")
        )
    })
}

impl Mpi {
    /// Initialises MPI (once per process) with `MPI_THREAD_SERIALIZED` and
    /// makes MPI errors return codes instead of aborting.
    pub fn init() -> Result<Mpi, DistError> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| backend_error("MPI is already initialised in this process".into()))?;
        if provided < Threading::Serialized {
            return Err(backend_error(format!(
                "the MPI library provides thread level {provided:?}; MPI_THREAD_SERIALIZED is needed"
            )));
        }
        let world = universe.world();
        // SAFETY: the world communicator and the predefined error handler are valid while MPI is initialised.
        check("MPI_Comm_set_errhandler", unsafe {
            ffi::MPI_Comm_set_errhandler(world.as_raw(), ffi::RSMPI_ERRORS_RETURN)
        })?;
        let rank = usize::try_from(world.rank()).map_err(|_| backend_error("negative rank".into()))?;
        let world_size = usize::try_from(world.size()).map_err(|_| backend_error("negative world size".into()))?;
        Ok(Mpi {
            universe,
            rank,
            world_size,
            serialize: Mutex::new(()),
            in_place: in_place_sentinel(),
        })
    }

    /// Runs `call` with the world communicator while holding the lock that
    /// serialises MPI calls.
    fn with_comm<T>(&self, call: impl FnOnce(ffi::MPI_Comm) -> Result<T, DistError>) -> Result<T, DistError> {
        let _guard = self
            .serialize
            .lock()
            .map_err(|_| backend_error("an earlier MPI call panicked".into()))?;
        call(self.universe.world().as_raw())
    }

    /// Errors, naming the ranks, unless every rank passes a tensor of the same shape and
    /// kind: `MPI_Allgather` takes one count for all ranks, so a rank with a smaller batch
    /// would otherwise make the gather fail with MPI's own message, or read short buffers.
    /// Costs one all-gather of a few integers per rank.
    fn check_same_shape(&self, op: &'static str, send: &Tensor) -> Result<(), DistError> {
        let mine = shape_signature(send);
        let mut all = vec![0i64; SIGNATURE_LEN * self.world_size];
        let int64 = datatype(op, Kind::Int64)?;
        self.with_comm(|comm| {
            // SAFETY: `mine` holds SIGNATURE_LEN i64s and `all` world_size times as many;
            // both live until the call returns.
            check(op, unsafe {
                ffi::MPI_Allgather(
                    mine.as_ptr() as *const c_void,
                    SIGNATURE_LEN as c_int,
                    int64,
                    all.as_mut_ptr() as *mut c_void,
                    SIGNATURE_LEN as c_int,
                    int64,
                    comm,
                )
            })
        })?;
        let signatures: Vec<&[i64]> = all.chunks(SIGNATURE_LEN).collect();
        match disagreement(&signatures) {
            None => Ok(()),
            Some(reason) => Err(tensor_error(op, reason)),
        }
    }

    /// Makes all-reduce go through a scratch copy of the input instead of
    /// `MPI_IN_PLACE`, as it does with an MPI library of unknown family; for
    /// tests of that path and for comparing the two.
    pub fn disable_in_place(&mut self) {
        self.in_place = None;
    }

    /// Applies `op_on(comm, pointer, byte offset, count, dtype)` to `t`'s storage in chunks of at most
    /// `MAX_COUNT` elements; a non-contiguous `t` is worked on through a
    /// contiguous copy that is written back.
    fn in_place_chunks(
        &self,
        op: &'static str,
        t: &mut Tensor,
        op_on: impl Fn(ffi::MPI_Comm, *mut c_void, usize, c_int, ffi::MPI_Datatype) -> c_int,
    ) -> Result<(), DistError> {
        require_cpu(op, t)?;
        let dtype = datatype(op, t.kind())?;
        let was_contiguous = t.is_contiguous();
        let work = if was_contiguous {
            t.shallow_clone()
        } else {
            t.contiguous()
        };
        let numel = work.numel();
        let elem_size = work.kind().elt_size_in_bytes();
        if numel > 0 {
            let base = work.data_ptr() as *mut u8;
            self.with_comm(|comm| {
                let mut start = 0usize;
                while start < numel {
                    let n = (numel - start).min(MAX_COUNT);
                    // SAFETY: `work` is a contiguous CPU tensor of `numel` elements of
                    // `elem_size` bytes, so [start, start + n) lies inside its storage;
                    // `work` stays alive (and unaliased by Rust references) during the call.
                    let chunk = unsafe { base.add(start * elem_size) } as *mut c_void;
                    check(op, op_on(comm, chunk, start * elem_size, n as c_int, dtype))?;
                    start += n;
                }
                Ok(())
            })?;
        }
        if !was_contiguous {
            t.copy_(&work);
        }
        Ok(())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        const OP: &str = "all_gather";
        require_cpu(OP, t)?;
        let dtype = datatype(OP, t.kind())?;
        let (send, shape) = super::collective::gather_input(OP, t, self.world_size)?;
        self.check_same_shape(OP, &send)?;
        let gathered = Tensor::empty(shape.as_slice(), (send.kind(), Device::Cpu));
        let per_rank = count(OP, send.numel())?;
        if per_rank == 0 {
            return Ok(gathered);
        }
        self.with_comm(|comm| {
            // SAFETY: `send` is contiguous with `per_rank` elements; `gathered` is a fresh
            // contiguous tensor of world_size * per_rank elements of the same dtype. Both
            // outlive the call, and nothing else reads or writes `gathered` meanwhile.
            check(OP, unsafe {
                ffi::MPI_Allgather(
                    send.data_ptr(),
                    per_rank,
                    dtype,
                    gathered.data_ptr(),
                    per_rank,
                    dtype,
                    comm,
                )
            })
        })?;
        Ok(gathered)
    }

    fn all_reduce_sum_(&self, t: &mut Tensor) -> Result<(), DistError> {
        const OP: &str = "all_reduce_sum_";
        match self.in_place {
            Some(sentinel) => self.in_place_chunks(OP, t, |comm, chunk, _offset, n, dtype| {
                // SAFETY: `chunk` points at `n` elements of `dtype` (see `in_place_chunks`);
                // the sentinel is this library's MPI_IN_PLACE, which makes `chunk` both
                // the input and the output.
                unsafe { ffi::MPI_Allreduce(sentinel as *const c_void, chunk, n, dtype, ffi::RSMPI_SUM, comm) }
            }),
            None => {
                // Unknown MPI library: reduce a copy of the input into `t`'s storage.
                require_cpu(OP, t)?;
                let mut input = Tensor::empty(t.size().as_slice(), (t.kind(), Device::Cpu));
                input.copy_(t);
                let input_base = input.data_ptr() as usize;
                self.in_place_chunks(OP, t, |comm, chunk, offset, n, dtype| {
                    // SAFETY: `input` is a contiguous copy of `t` (alive until this call
                    // returns), so `offset` bytes into it start the chunk's `n` input elements.
                    let send = (input_base + offset) as *const c_void;
                    unsafe { ffi::MPI_Allreduce(send, chunk, n, dtype, ffi::RSMPI_SUM, comm) }
                })
            }
        }
    }

    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError> {
        const OP: &str = "reduce_scatter_sum";
        require_cpu(OP, t)?;
        let dtype = datatype(OP, t.kind())?;
        let shape = super::collective::scatter_block_shape(OP, &t.size(), self.world_size)?;
        let send = t.detach().contiguous();
        let block = Tensor::empty(shape.as_slice(), (send.kind(), Device::Cpu));
        let per_rank = count(OP, block.numel())?;
        if per_rank == 0 {
            return Ok(block);
        }
        self.with_comm(|comm| {
            // SAFETY: `send` is contiguous with world_size * per_rank elements, `block` is
            // fresh and contiguous with per_rank elements, same dtype; both outlive the call.
            check(OP, unsafe {
                ffi::MPI_Reduce_scatter_block(send.data_ptr(), block.data_ptr(), per_rank, dtype, ffi::RSMPI_SUM, comm)
            })
        })?;
        Ok(block)
    }

    fn broadcast_(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        const OP: &str = "broadcast_";
        super::collective::check_root(OP, root, self.world_size)?;
        let root = root as c_int;
        self.in_place_chunks(OP, t, |comm, chunk, _offset, n, dtype| {
            // SAFETY: `chunk` points at `n` elements of `dtype` (see `in_place_chunks`).
            unsafe { ffi::MPI_Bcast(chunk, n, dtype, root, comm) }
        })
    }

    fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the world communicator is valid while `self.universe` lives.
        self.with_comm(|comm| check("barrier", unsafe { ffi::MPI_Barrier(comm) }))
    }

    fn ring_pass(&self, t: &Tensor) -> Result<Tensor, DistError> {
        const OP: &str = "ring_pass";
        require_cpu(OP, t)?;
        let dtype = datatype(OP, t.kind())?;
        let send = t.detach().contiguous();
        let received = Tensor::empty(send.size().as_slice(), (send.kind(), Device::Cpu));
        let n = count(OP, send.numel())?;
        if n == 0 {
            return Ok(received);
        }
        let world = self.world_size as c_int;
        let (next, previous) = (
            (self.rank as c_int + 1) % world,
            (self.rank as c_int + world - 1) % world,
        );
        self.with_comm(|comm| {
            // SAFETY: `send` is contiguous with `n` elements; `received` is fresh and contiguous
            // with `n` elements of the same dtype (every rank passes the same shape); both
            // outlive the call. One tag for the ring: each rank sends one message to `next`
            // and receives one from `previous` per call, so messages cannot cross.
            check(OP, unsafe {
                ffi::MPI_Sendrecv(
                    send.data_ptr(),
                    n,
                    dtype,
                    next,
                    RING_TAG,
                    received.data_ptr(),
                    n,
                    dtype,
                    previous,
                    RING_TAG,
                    comm,
                    ffi::RSMPI_STATUS_IGNORE,
                )
            })
        })?;
        Ok(received)
    }
}

/// The message tag of [`Collective::ring_pass`] (every other operation is a collective).
const RING_TAG: c_int = 7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_signatures_name_the_ranks_that_differ() {
        let a = shape_signature(&Tensor::zeros([4, 512], (Kind::Float, Device::Cpu)));
        let b = shape_signature(&Tensor::zeros([3, 512], (Kind::Float, Device::Cpu)));
        let c = shape_signature(&Tensor::zeros([4, 512], (Kind::Int64, Device::Cpu)));
        assert_eq!(disagreement(&[&a, &a, &a]), None);
        assert_eq!(
            disagreement(&[&a, &b, &a, &c]).unwrap(),
            "ranks disagree on the tensor: rank 0 passed (4, 512) f32 but rank 1 passed (3, 512) f32, \
             rank 3 passed (4, 512) i64"
        );
    }
}
