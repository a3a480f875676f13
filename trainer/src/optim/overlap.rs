//! The gradient all-reduce overlapped with the backward pass (`optim.overlap_reduce`).
//!
//! tch has no autograd hooks, so DDP's per-bucket overlap is out of reach; what the step can
//! do is run the two towers' backward passes one after the other and reduce the first
//! tower's gradients on a communication thread while the second tower backpropagates
//! ([`reduce_during`]). The sums are [`GradSync::all_reduce`]'s, bucket for bucket; only
//! when they run changes. Collective calls never overlap each other: the main thread makes
//! its own (the second share's reduce) only after joining the communication thread.

use std::time::Instant;

use super::sync::GradSync;
use super::Gradients;
use crate::dist::{Collective, DistError};

/// When the overlapped exchange spent its time, for the metrics and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OverlapReport {
    /// Seconds the step waited for communication: for the first share's reduce after the
    /// second share's backward ended, plus the second share's reduce.
    pub exposed_s: f64,
    /// Seconds during which the first share's reduce and the second share's backward ran at
    /// once (the communication the overlap hid).
    pub hidden_s: f64,
    /// Wall time of the first share's reduce (on the communication thread).
    pub first_reduce_s: f64,
    /// Wall time of the second share's backward pass (on the calling thread).
    pub backward_s: f64,
}

/// Sums `first` over ranks on a communication thread while `backward` runs on this one, then
/// sums what `backward` returned; returns the two, merged, and the timings. Collective: every
/// rank calls it with the same gradients defined.
pub fn reduce_during(
    sync: &GradSync,
    mut first: Gradients,
    coll: &dyn Collective,
    backward: impl FnOnce() -> Gradients,
) -> Result<(Gradients, OverlapReport), DistError> {
    let (reduced, mut second, times) = std::thread::scope(|scope| {
        let reducer = std::thread::Builder::new()
            .name("grad-reduce".into())
            .spawn_scoped(scope, move || {
                let started = Instant::now();
                let result = sync.all_reduce(&mut first, 1.0, coll);
                (result.map(|_| first), started, Instant::now())
            })
            .map_err(|e| DistError::Backend {
                backend: "optim.overlap_reduce",
                reason: format!("cannot start the gradient-reduce thread: {e}"),
            })?;
        let backward_started = Instant::now();
        let second = backward();
        let backward_ended = Instant::now();
        let (reduced, reduce_started, reduce_ended) = match reducer.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let joined = Instant::now();
        let times = [reduce_started, reduce_ended, backward_started, backward_ended, joined];
        Ok::<_, DistError>((reduced, second, times))
    })?;
    let [reduce_started, reduce_ended, backward_started, backward_ended, joined] = times;
    let mut merged = reduced?;
    let second_reduce = sync.all_reduce(&mut second, 1.0, coll)?;
    merged.accumulate(&second);
    let hidden = reduce_ended
        .min(backward_ended)
        .saturating_duration_since(reduce_started.max(backward_started));
    Ok((
        merged,
        OverlapReport {
            exposed_s: joined.duration_since(backward_ended).as_secs_f64() + second_reduce.seconds,
            hidden_s: hidden.as_secs_f64(),
            first_reduce_s: reduce_ended.duration_since(reduce_started).as_secs_f64(),
            backward_s: backward_ended.duration_since(backward_started).as_secs_f64(),
        },
    ))
}
