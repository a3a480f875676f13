//! An in-process group of ranks: one [`LocalMember`] per thread, exchanging
//! tensors through shared memory. Used by tests (the multi-worker equivalence
//! check without MPI) and to simulate ranks in benchmarks.
//!
//! Every operation is one rendezvous: each rank deposits a copy of its tensor,
//! waits until all ranks have deposited, then computes its own result from all
//! deposits. Sums are taken in rank order 0..W, so every rank gets bitwise the
//! same result and runs are repeatable.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::{Collective, DistError};

const BACKEND: &str = "local";

/// How long a rank waits for the others before the operation fails (a rank that
/// died or took another code path must not hang the group forever).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds in-process groups.
#[derive(Debug)]
pub struct LocalGroup;

impl LocalGroup {
    /// `world_size` members, one per rank in order; move each into its own thread.
    // The group exists only through its members, so `new` hands out the members.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world_size: usize) -> Vec<LocalMember> {
        LocalGroup::with_timeout(world_size, DEFAULT_TIMEOUT)
    }

    /// Like [`LocalGroup::new`], with the time a rank waits for the others.
    pub fn with_timeout(world_size: usize, timeout: Duration) -> Vec<LocalMember> {
        let shared = Arc::new(Shared {
            world_size,
            timeout,
            round: Mutex::new(Round {
                slots: (0..world_size).map(|_| None).collect(),
                deposited: 0,
                taken: 0,
                reading: false,
                generation: 0,
                departed: None,
            }),
            changed: Condvar::new(),
        });
        (0..world_size)
            .map(|rank| LocalMember {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }
}

/// One rank of an in-process group. Dropping a member (its thread ended or
/// panicked) makes the other members' pending and later operations fail
/// instead of waiting for it.
#[derive(Debug)]
pub struct LocalMember {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    world_size: usize,
    timeout: Duration,
    round: Mutex<Round>,
    changed: Condvar,
}

/// The state of the current rendezvous.
#[derive(Debug)]
struct Round {
    /// Rank r's deposit: the operation it called and an owned copy of its
    /// tensor, never written after the deposit.
    slots: Vec<Option<(&'static str, Tensor)>>,
    deposited: usize,
    /// Ranks that have taken their handles to the deposits in the reading phase.
    taken: usize,
    /// All ranks have deposited; the slots are being read. New deposits wait.
    reading: bool,
    /// Counts completed rounds, so a waiter knows its round finished.
    generation: u64,
    /// The first rank that left the group, if any.
    departed: Option<usize>,
}

impl LocalMember {
    fn lock(&self) -> Result<MutexGuard<'_, Round>, DistError> {
        self.shared
            .round
            .lock()
            .map_err(|_| backend_error("a rank panicked while holding the group lock".into()))
    }

    /// Waits for a change of the round, failing if a rank left the group or the
    /// deadline passed. Callers check their own condition before calling, so a
    /// rank that leaves after a round completed does not fail that round.
    fn wait<'a>(
        &self,
        round: MutexGuard<'a, Round>,
        deadline: Instant,
        op: &str,
    ) -> Result<MutexGuard<'a, Round>, DistError> {
        if let Some(departed) = round.departed {
            return Err(backend_error(format!(
                "{op} on rank {}: rank {departed} left the group",
                self.rank
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(backend_error(format!(
                "{op} on rank {}: the other ranks did not arrive within {:?}",
                self.rank, self.shared.timeout
            )));
        }
        let (round, _) = self
            .shared
            .changed
            .wait_timeout(round, left)
            .map_err(|_| backend_error("a rank panicked while holding the group lock".into()))?;
        Ok(round)
    }

    /// The rendezvous: deposits a detached copy of `t` and returns handles to
    /// every rank's deposit, in rank order. Deposits are never written after
    /// they are made, so threads may read them concurrently through the handles.
    /// Fails on every rank alike if the ranks called different operations.
    fn exchange(&self, op: &'static str, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        let deadline = Instant::now() + self.shared.timeout;
        let owned = t.detach().copy();
        let mut round = self.lock()?;
        // The previous round's deposits must be read by everyone before they go.
        while round.reading {
            round = self.wait(round, deadline, op)?;
        }
        if let Some(departed) = round.departed {
            return Err(backend_error(format!(
                "{op} on rank {}: rank {departed} left the group",
                self.rank
            )));
        }
        let generation = round.generation;
        round.slots[self.rank] = Some((op, owned));
        round.deposited += 1;
        if round.deposited == self.shared.world_size {
            round.reading = true;
            self.shared.changed.notify_all();
        }
        while !(round.reading && round.generation == generation) {
            round = self.wait(round, deadline, op)?;
        }
        let mut ops = Vec::with_capacity(self.shared.world_size);
        let mut tensors = Vec::with_capacity(self.shared.world_size);
        // Every slot is filled while `reading` holds.
        for (slot_op, tensor) in round.slots.iter().flatten() {
            ops.push(*slot_op);
            tensors.push(tensor.shallow_clone());
        }
        round.taken += 1;
        if round.taken == self.shared.world_size {
            round.slots.iter_mut().for_each(|slot| *slot = None);
            round.deposited = 0;
            round.taken = 0;
            round.reading = false;
            round.generation += 1;
            self.shared.changed.notify_all();
        }
        drop(round);
        if let Some((other, other_op)) = ops.iter().enumerate().find(|(_, o)| **o != op) {
            return Err(backend_error(format!(
                "rank {} called {op} while rank {other} called {other_op}: ranks must call the same operations in order",
                self.rank
            )));
        }
        Ok(tensors)
    }

    /// Fails (on every rank alike) unless all deposits have the same shape and dtype.
    fn check_same_shape(&self, op: &'static str, deposits: &[Tensor]) -> Result<(), DistError> {
        let (shape, kind) = (deposits[0].size(), deposits[0].kind());
        for (rank, t) in deposits.iter().enumerate().skip(1) {
            if t.size() != shape || t.kind() != kind {
                return Err(DistError::Tensor {
                    op,
                    reason: format!(
                        "rank 0 passed {shape:?} {kind:?} but rank {rank} passed {:?} {:?}",
                        t.size(),
                        t.kind()
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Collective for LocalMember {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world_size
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        if t.dim() == 0 {
            return Err(DistError::Tensor {
                op: "all_gather",
                reason: "expected a tensor with a leading dimension, got a scalar".into(),
            });
        }
        let deposits = self.exchange("all_gather", t)?;
        self.check_same_shape("all_gather", &deposits)?;
        Ok(Tensor::cat(&deposits, 0))
    }

    fn all_reduce_sum_(&self, t: &mut Tensor) -> Result<(), DistError> {
        let deposits = self.exchange("all_reduce_sum_", t)?;
        self.check_same_shape("all_reduce_sum_", &deposits)?;
        let sum = sum_in_rank_order(deposits.iter().map(Tensor::shallow_clone));
        tch::no_grad(|| t.copy_(&sum));
        Ok(())
    }

    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let op = "reduce_scatter_sum";
        let world = self.shared.world_size as i64;
        if t.dim() == 0 || t.size()[0] % world != 0 {
            return Err(DistError::Tensor {
                op,
                reason: format!(
                    "leading dimension of {:?} must be a multiple of the world size {world}",
                    t.size()
                ),
            });
        }
        let deposits = self.exchange(op, t)?;
        self.check_same_shape(op, &deposits)?;
        let block = t.size()[0] / world;
        let start = self.rank as i64 * block;
        Ok(sum_in_rank_order(deposits.iter().map(|d| d.narrow(0, start, block))))
    }

    fn broadcast_(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        if root >= self.shared.world_size {
            return Err(DistError::Tensor {
                op: "broadcast_",
                reason: format!("root {root} is not a rank of a world of {}", self.shared.world_size),
            });
        }
        let deposits = self.exchange("broadcast_", t)?;
        self.check_same_shape("broadcast_", &deposits)?;
        if self.rank != root {
            tch::no_grad(|| t.copy_(&deposits[root]));
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.exchange("barrier", &Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)))
            .map(|_| ())
    }

    fn ring_pass(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let deposits = self.exchange("ring_pass", t)?;
        self.check_same_shape("ring_pass", &deposits)?;
        let world = self.shared.world_size;
        Ok(deposits[(self.rank + world - 1) % world].copy())
    }
}

impl Drop for LocalMember {
    fn drop(&mut self) {
        // A poisoned lock still holds valid state: mark the departure either way.
        let mut round = self
            .shared
            .round
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        round.departed.get_or_insert(self.rank);
        self.shared.changed.notify_all();
    }
}

/// Σ in the given (rank) order, into a fresh tensor.
fn sum_in_rank_order(mut parts: impl Iterator<Item = Tensor>) -> Tensor {
    let first = parts.next().map(|t| t.copy()).unwrap_or_default();
    parts.fold(first, |mut acc, part| {
        let _ = acc.g_add_(&part);
        acc
    })
}

impl LocalGroup {
    /// Runs `work` on every member of a new group of `world` ranks, one scoped
    /// thread each, and returns the results in rank order. A panic in a rank's
    /// thread is re-raised here.
    pub fn run<T: Send>(world: usize, work: impl Fn(&LocalMember) -> T + Sync) -> Vec<T> {
        let members = LocalGroup::new(world);
        std::thread::scope(|scope| {
            let handles: Vec<_> = members
                .into_iter()
                .map(|member| {
                    let work = &work;
                    scope.spawn(move || work(&member))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    }
}

fn backend_error(reason: String) -> DistError {
    DistError::Backend {
        backend: BACKEND,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Rank r's test tensor: distinct values per rank and position.
    fn rank_tensor(rank: usize, rows: i64) -> Tensor {
        Tensor::arange(rows * 2, (Kind::Float, Device::Cpu)).view([rows, 2]) + 100.0 * rank as f64
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 values")
    }

    #[test]
    fn ring_pass_hands_each_rank_the_previous_ranks_tensor() {
        let results = LocalGroup::run(3, |coll| {
            let mine = rank_tensor(coll.rank(), 2);
            let got = coll.ring_pass(&mine).unwrap();
            let mut around = mine.copy();
            for _ in 0..3 {
                around = coll.ring_pass(&around).unwrap();
            }
            (got, around, mine)
        });
        for (rank, (got, around, mine)) in results.iter().enumerate() {
            assert!(
                got.equal(&rank_tensor((rank + 2) % 3, 2)),
                "rank {rank} got another rank's tensor"
            );
            assert!(around.equal(mine), "rank {rank}: three passes around three ranks");
        }
    }

    #[test]
    fn all_gather_concatenates_in_rank_order() {
        for world in [2usize, 3] {
            let results = LocalGroup::run(world, |m| m.all_gather(&rank_tensor(m.rank(), 2)).map(|t| values(&t)));
            let expected: Vec<f32> = (0..world).flat_map(|r| values(&rank_tensor(r, 2))).collect();
            for got in results {
                assert_eq!(got.expect("all_gather"), expected, "world {world}");
            }
        }
    }

    #[test]
    fn all_reduce_sums_over_ranks_in_place() {
        for world in [2usize, 3] {
            let results = LocalGroup::run(world, |m| {
                let mut t = rank_tensor(m.rank(), 2);
                m.all_reduce_sum_(&mut t).map(|_| values(&t))
            });
            let expected = values(
                &(0..world)
                    .map(|r| rank_tensor(r, 2))
                    .fold(Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)), |a, b| a + b),
            );
            for got in results {
                assert_eq!(got.expect("all_reduce"), expected, "world {world}");
            }
        }
    }

    #[test]
    fn reduce_scatter_gives_each_rank_its_summed_block() {
        for world in [2usize, 3] {
            let rows = 2 * world as i64;
            let results = LocalGroup::run(world, |m| {
                m.reduce_scatter_sum(&rank_tensor(m.rank(), rows)).map(|t| values(&t))
            });
            let total = (0..world)
                .map(|r| rank_tensor(r, rows))
                .fold(Tensor::zeros([rows, 2], (Kind::Float, Device::Cpu)), |a, b| a + b);
            for (rank, got) in results.into_iter().enumerate() {
                assert_eq!(
                    got.expect("reduce_scatter"),
                    values(&total.narrow(0, 2 * rank as i64, 2)),
                    "world {world} rank {rank}"
                );
            }
        }
    }

    #[test]
    fn broadcast_copies_the_root_tensor() {
        for world in [2usize, 3] {
            let root = world - 1;
            let results = LocalGroup::run(world, |m| {
                let mut t = rank_tensor(m.rank(), 3);
                m.broadcast_(&mut t, root).map(|_| values(&t))
            });
            for got in results {
                assert_eq!(got.expect("broadcast"), values(&rank_tensor(root, 3)), "world {world}");
            }
        }
    }

    #[test]
    fn barrier_and_repeated_operations_stay_in_step() {
        for world in [2usize, 3] {
            let results = LocalGroup::run(world, |m| -> Result<Vec<f32>, DistError> {
                let mut sums = Vec::new();
                for round in 0..20 {
                    m.barrier()?;
                    let mut t = Tensor::from_slice(&[(m.rank() * round) as f32]);
                    m.all_reduce_sum_(&mut t)?;
                    sums.push(values(&t)[0]);
                }
                Ok(sums)
            });
            let tri = (0..world).sum::<usize>() as f32;
            for got in results {
                let expected: Vec<f32> = (0..20).map(|round| tri * round as f32).collect();
                assert_eq!(got.expect("rounds"), expected);
            }
        }
    }

    #[test]
    fn mismatched_shapes_fail_on_every_rank() {
        let results = LocalGroup::run(3, |m| {
            m.all_gather(&rank_tensor(m.rank(), 1 + m.rank() as i64)).map(|_| ())
        });
        for got in results {
            let err = got.expect_err("shapes differ").to_string();
            assert!(err.contains("all_gather") && err.contains("rank 1"), "{err}");
        }
    }

    #[test]
    fn mismatched_operations_fail_on_every_rank() {
        let results = LocalGroup::run(2, |m| {
            if m.rank() == 0 {
                m.barrier()
            } else {
                m.all_gather(&rank_tensor(1, 1)).map(|_| ())
            }
        });
        for got in results {
            let err = got.expect_err("ops differ").to_string();
            assert!(err.contains("barrier") && err.contains("all_gather"), "{err}");
        }
    }

    #[test]
    fn a_departed_rank_fails_the_others_instead_of_hanging() {
        let mut members = LocalGroup::with_timeout(2, Duration::from_secs(20));
        let survivor = members.remove(0);
        drop(members); // rank 1 leaves without taking part
        let started = Instant::now();
        let err = survivor.barrier().expect_err("rank 1 is gone").to_string();
        assert!(err.contains("rank 1 left"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_rank_times_out() {
        let members = LocalGroup::with_timeout(2, Duration::from_millis(200));
        let err = members[0].barrier().expect_err("rank 1 never arrives").to_string();
        assert!(err.contains("did not arrive"), "{err}");
    }
}
