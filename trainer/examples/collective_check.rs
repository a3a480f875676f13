//! Checks every MPI collective against its closed form. Run under mpirun:
//!
//! ```text
//! mpirun --allow-run-as-root --oversubscribe -np 2 target/debug/examples/collective_check
//! ```
//!
//! Each rank prints `collective_check ok rank R` and exits 0, or names the
//! first mismatch and exits 1. With `COLLECTIVE_BENCH_MB=100` rank 0 also
//! prints the all-reduce bandwidth for a tensor of that many MB, and the ring pass's.

use std::time::Instant;

use trainer::dist::{Collective, Mpi};
use trainer::tch::{Device, Kind, Tensor};

/// Compares element by element; returns the first difference.
fn expect_equal(what: &str, got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.size() != want.size() {
        return Err(format!("{what}: shape {:?}, expected {:?}", got.size(), want.size()));
    }
    if got.kind() != want.kind() {
        return Err(format!("{what}: dtype {:?}, expected {:?}", got.kind(), want.kind()));
    }
    let got64 = got.to_kind(Kind::Double).flatten(0, -1);
    let want64 = want.to_kind(Kind::Double).flatten(0, -1);
    let got_values = Vec::<f64>::try_from(&got64).map_err(|e| format!("{what}: {e}"))?;
    let want_values = Vec::<f64>::try_from(&want64).map_err(|e| format!("{what}: {e}"))?;
    match got_values.iter().zip(&want_values).position(|(g, w)| g != w) {
        Some(i) => Err(format!(
            "{what}: element {i} is {}, expected {}",
            got_values[i], want_values[i]
        )),
        None => Ok(()),
    }
}

fn check_all(mpi: &mut Mpi) -> Result<(), String> {
    let cpu = Device::Cpu;
    let rank = mpi.rank() as i64;
    let world = mpi.world_size() as i64;
    let rank_sum = world * (world + 1) / 2; // sum over ranks of (rank + 1)
    let err = |e: trainer::dist::DistError| e.to_string();

    // all_gather: rank r sends x[i, j] = 100 r + 3 i + j, shape (2, 3).
    let pattern = Tensor::arange(6, (Kind::Float, cpu)).view([2, 3]);
    let local = &pattern + (100 * rank) as f64;
    let gathered = mpi.all_gather(&local).map_err(err)?;
    let want = Tensor::cat(&(0..world).map(|q| &pattern + (100 * q) as f64).collect::<Vec<_>>(), 0);
    expect_equal("all_gather f32", &gathered, &want)?;
    // A non-contiguous input (a transpose) gathers its logical values.
    let gathered_t = mpi.all_gather(&local.tr()).map_err(err)?;
    let want_t = Tensor::cat(
        &(0..world)
            .map(|q| (&pattern + (100 * q) as f64).tr())
            .collect::<Vec<_>>(),
        0,
    );
    expect_equal("all_gather transposed", &gathered_t, &want_t)?;
    // Ranks passing different batch sizes: an error on every rank naming the odd one out
    // (rank r passes r + 2 rows), and the world is still usable afterwards.
    let uneven = Tensor::zeros([rank + 2, 3], (Kind::Float, cpu));
    match mpi.all_gather(&uneven) {
        Ok(t) => return Err(format!("all_gather of uneven batches gave {:?}", t.size())),
        Err(e) => {
            let text = e.to_string();
            if !(text.contains("rank 0 passed (2, 3) f32") && text.contains("rank 1 passed (3, 3) f32")) {
                return Err(format!("uneven all_gather: the error does not name the ranks: {text}"));
            }
        }
    }
    expect_equal(
        "all_gather after a refused one",
        &mpi.all_gather(&local).map_err(err)?,
        &want,
    )?;

    // all_reduce_sum_ over f32, f64, i64, i32: (r + 1) * arange sums to rank_sum * arange.
    for kind in [Kind::Float, Kind::Double, Kind::Int64, Kind::Int] {
        let base = Tensor::arange(7, (kind, cpu));
        let mut t = &base * (rank + 1);
        mpi.all_reduce_sum_(&mut t).map_err(err)?;
        expect_equal(&format!("all_reduce_sum_ {kind:?}"), &t, &(&base * rank_sum))?;
    }
    // In place on a view writes through to the parent: reduce one row of a matrix.
    let parent = Tensor::ones([3, 4], (Kind::Float, cpu)) * (rank + 1) as f64;
    let mut row = parent.narrow(0, 1, 1);
    mpi.all_reduce_sum_(&mut row).map_err(err)?;
    let want_parent = Tensor::ones([3, 4], (Kind::Float, cpu)) * (rank + 1) as f64;
    let _ = want_parent.narrow(0, 1, 1).fill_(rank_sum as f64);
    expect_equal("all_reduce_sum_ of a row view", &parent, &want_parent)?;
    // A non-contiguous view (a column) is reduced through a copy written back.
    let parent = Tensor::ones([3, 4], (Kind::Double, cpu)) * (rank + 1) as f64;
    let mut column = parent.select(1, 2);
    mpi.all_reduce_sum_(&mut column).map_err(err)?;
    let want_parent = Tensor::ones([3, 4], (Kind::Double, cpu)) * (rank + 1) as f64;
    let _ = want_parent.select(1, 2).fill_(rank_sum as f64);
    expect_equal("all_reduce_sum_ of a column view", &parent, &want_parent)?;

    // reduce_scatter_sum: (r + 1) * z with z[k, j] = 3 k + j of shape (2W, 3);
    // rank r gets rows 2r..2r+2 times rank_sum.
    let z = Tensor::arange(6 * world, (Kind::Float, cpu)).view([2 * world, 3]);
    let block = mpi.reduce_scatter_sum(&(&z * (rank + 1) as f64)).map_err(err)?;
    expect_equal(
        "reduce_scatter_sum",
        &block,
        &(z.narrow(0, 2 * rank, 2) * rank_sum as f64),
    )?;
    let odd_rows = Tensor::zeros([2 * world + 1, 3], (Kind::Float, cpu));
    if world > 1 && mpi.reduce_scatter_sum(&odd_rows).is_ok() {
        return Err("reduce_scatter_sum accepted rows not divisible by the world size".into());
    }

    // ring_pass: rank r sends (r + 1)·z (f32, then the same as f64) and receives what rank
    // r − 1 sent; going W times around brings every rank its own tensor back.
    let previous = (rank + world - 1) % world;
    for kind in [Kind::Float, Kind::Double] {
        let mine = z.to_kind(kind) * (rank + 1) as f64;
        let got = mpi.ring_pass(&mine).map_err(err)?;
        expect_equal("ring_pass", &got, &(z.to_kind(kind) * (previous + 1) as f64))?;
        let mut around = mine.copy();
        for _ in 0..world {
            around = mpi.ring_pass(&around).map_err(err)?;
        }
        expect_equal("ring_pass all the way around", &around, &mine)?;
    }

    // broadcast_ from the last rank, f32 and i64, plus a u8 byte string (an NCCL id's shape).
    let root = (world - 1) as usize;
    let mut b = Tensor::full([5], rank as f64, (Kind::Float, cpu));
    mpi.broadcast_(&mut b, root).map_err(err)?;
    expect_equal(
        "broadcast_ f32",
        &b,
        &Tensor::full([5], (world - 1) as f64, (Kind::Float, cpu)),
    )?;
    let mut ids = Tensor::arange(128, (Kind::Int64, cpu)) + rank * 1000;
    mpi.broadcast_(&mut ids, 0).map_err(err)?;
    expect_equal("broadcast_ i64", &ids, &Tensor::arange(128, (Kind::Int64, cpu)))?;
    let mut bytes = Tensor::full([128], rank as f64, (Kind::Uint8, cpu));
    mpi.broadcast_(&mut bytes, 0).map_err(err)?;
    expect_equal("broadcast_ u8", &bytes, &Tensor::zeros([128], (Kind::Uint8, cpu)))?;
    if mpi.broadcast_(&mut b, world as usize).is_ok() {
        return Err("broadcast_ accepted a root outside the world".into());
    }
    let mut flags = Tensor::ones([2], (Kind::Bool, cpu));
    if mpi.all_reduce_sum_(&mut flags).is_ok() {
        return Err("all_reduce_sum_ accepted a bool tensor".into());
    }

    // A large all-reduce (10M f32), through MPI_IN_PLACE and through the scratch path.
    let mut large = Tensor::full([10_000_000], (rank + 1) as f64, (Kind::Float, cpu));
    mpi.all_reduce_sum_(&mut large).map_err(err)?;
    expect_equal(
        "all_reduce_sum_ 10M f32",
        &large,
        &Tensor::full([10_000_000], rank_sum as f64, (Kind::Float, cpu)),
    )?;
    // Determinism: the same random input reduced twice gives the same bits, and the
    // scratch-buffer path (for MPI libraries of unknown family) agrees with it.
    let random = Tensor::randn([1_000_003], (Kind::Float, cpu)) * (rank + 1) as f64;
    let mut first = random.copy();
    mpi.all_reduce_sum_(&mut first).map_err(err)?;
    let mut second = random.copy();
    mpi.all_reduce_sum_(&mut second).map_err(err)?;
    expect_equal("all_reduce_sum_ run to run", &second, &first)?;
    mpi.disable_in_place();
    let mut scratch = random.copy();
    mpi.all_reduce_sum_(&mut scratch).map_err(err)?;
    expect_equal("all_reduce_sum_ scratch path", &scratch, &first)?;

    mpi.barrier().map_err(err)?;
    Ok(())
}

/// Times all-reduces of `megabytes` MB of f32 with MPI_IN_PLACE (call after a
/// fresh `Mpi::init`, before `disable_in_place`).
fn bench(mpi: &Mpi, megabytes: usize) -> Result<(), String> {
    let numel = (megabytes * 1_000_000 / 4) as i64;
    let mut t = Tensor::ones([numel], (Kind::Float, Device::Cpu));
    mpi.all_reduce_sum_(&mut t).map_err(|e| e.to_string())?; // warm-up
    let rounds = 5;
    mpi.barrier().map_err(|e| e.to_string())?;
    let start = Instant::now();
    for _ in 0..rounds {
        mpi.all_reduce_sum_(&mut t).map_err(|e| e.to_string())?;
    }
    let seconds = start.elapsed().as_secs_f64() / rounds as f64;
    if mpi.rank() == 0 {
        let bytes = (numel * 4) as f64;
        let world = mpi.world_size() as f64;
        // Bus bandwidth as nccl-tests define it for all-reduce: 2 (W - 1) / W of the bytes.
        println!(
            "collective_check bench all_reduce {megabytes} MB f32 x{} ranks: {:.1} ms, algbw {:.2} GB/s, busbw {:.2} GB/s",
            mpi.world_size(),
            seconds * 1e3,
            bytes / seconds / 1e9,
            bytes * 2.0 * (world - 1.0) / world / seconds / 1e9
        );
    }
    // The same bytes once around the ring (MPI_Sendrecv: every rank sends and receives at
    // once), the transport's full-duplex rate.
    mpi.barrier().map_err(|e| e.to_string())?;
    let start = Instant::now();
    for _ in 0..rounds {
        let _ = mpi.ring_pass(&t).map_err(|e| e.to_string())?;
    }
    let seconds = start.elapsed().as_secs_f64() / rounds as f64;
    if mpi.rank() == 0 {
        println!(
            "collective_check bench ring_pass {megabytes} MB f32: {:.1} ms, {:.2} GB/s each way",
            seconds * 1e3,
            (numel * 4) as f64 / seconds / 1e9
        );
    }
    Ok(())
}

fn main() {
    let mut mpi = match Mpi::init() {
        Ok(mpi) => mpi,
        Err(e) => {
            eprintln!("collective_check: {e}");
            std::process::exit(2);
        }
    };
    let rank = mpi.rank();
    let bench_mb = std::env::var("COLLECTIVE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let outcome = match bench_mb {
        Some(mb) => bench(&mpi, mb),
        None => Ok(()),
    }
    .and_then(|()| check_all(&mut mpi));
    match outcome {
        Ok(()) => println!("collective_check ok rank {rank}"),
        Err(message) => {
            eprintln!("collective_check FAILED rank {rank}: {message}");
            // Exiting without finalising makes mpirun stop the other ranks.
            std::process::exit(1);
        }
    }
}
