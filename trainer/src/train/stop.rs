//! Why a run stops before its last step, each time with a checkpoint to resume from.
//!
//! - Graceful preemption: SIGTERM (what SLURM and the launcher send before killing) or
//!   SIGINT asks the run to finish its step, save a checkpoint and stop. The request is
//!   agreed on by all ranks each step, so every worker saves at the same step even when
//!   only one of them got the signal.
//! - Divergence: more than `max_nonfinite_steps` skipped steps in a row; the checkpoint
//!   holds the last good weights.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};
use tracing::warn;

use super::step::StepOutcome;
use crate::checkpoint::{Checkpointer, Progress, TrainState};
use crate::dist::{Collective, DistError};
use crate::TrainError;

/// Which signal asked the run to stop, set from the signal handlers.
#[derive(Clone)]
pub struct StopRequest {
    term: Arc<AtomicBool>,
    int: Arc<AtomicBool>,
}

impl StopRequest {
    /// Installs handlers for SIGTERM and SIGINT. A second signal of the same
    /// kind ends the process at once (exit 128 + signal), for a user who
    /// does not want to wait for the checkpoint.
    pub fn install() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        use signal_hook::flag;
        let request = Self {
            term: Arc::new(AtomicBool::new(false)),
            int: Arc::new(AtomicBool::new(false)),
        };
        // Order matters: the shutdown hook sees the flag set by an earlier signal.
        flag::register_conditional_shutdown(SIGTERM, 128 + SIGTERM, Arc::clone(&request.term))?;
        flag::register(SIGTERM, Arc::clone(&request.term))?;
        flag::register_conditional_shutdown(SIGINT, 128 + SIGINT, Arc::clone(&request.int))?;
        flag::register(SIGINT, Arc::clone(&request.int))?;
        Ok(request)
    }

    /// A request that no signal sets (for tests and embedding).
    pub fn never() -> Self {
        Self {
            term: Arc::new(AtomicBool::new(false)),
            int: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Handlers installed when `handle_signals` (the CLI), else [`StopRequest::never`].
    pub fn for_run(handle_signals: bool) -> Result<Self, TrainError> {
        match handle_signals {
            true => Self::install().map_err(TrainError::Signals),
            false => Ok(Self::never()),
        }
    }

    /// After the step that reached `progress`: when any rank got a signal, saves a
    /// checkpoint and ends the run with [`TrainError::Interrupted`]. Collective.
    pub fn unless_signalled(
        &self,
        progress: Progress,
        checkpointer: &Checkpointer,
        state: &TrainState,
        coll: &dyn Collective,
        device: Device,
    ) -> Result<(), TrainError> {
        let Some(signal) = self.agreed(coll, device)? else {
            return Ok(());
        };
        let saved = checkpointer.save(progress, state)?;
        Err(TrainError::Interrupted {
            signal,
            step: progress.step,
            checkpoint: checkpointer.resume_point(saved),
        })
    }

    fn local(&self) -> u8 {
        if self.term.load(Ordering::SeqCst) {
            1
        } else if self.int.load(Ordering::SeqCst) {
            2
        } else {
            0
        }
    }

    /// The signal any rank received (`SIGTERM` wins over `SIGINT`), agreed by
    /// all ranks through one small all-reduce.
    pub fn agreed(&self, coll: &dyn Collective, device: Device) -> Result<Option<&'static str>, DistError> {
        let local = self.local();
        let mut votes = Tensor::from_slice(&[f32::from(local == 1), f32::from(local == 2)]).to_device(device);
        if coll.world_size() > 1 {
            coll.all_reduce_sum_(&mut votes)?;
        }
        let votes = Vec::<f32>::try_from(votes.to_device(Device::Cpu).to_kind(Kind::Float)).unwrap_or_default();
        Ok(match votes.as_slice() {
            [term, _] if *term > 0.0 => Some("SIGTERM"),
            [_, int] if *int > 0.0 => Some("SIGINT"),
            _ => None,
        })
    }
}

/// After the step `outcome` that reached `progress`: a skipped step is logged, and past
/// `max_nonfinite_steps` skips in a row the run saves a checkpoint (of the last good
/// weights: skipped steps change nothing) and ends with [`TrainError::Diverged`].
/// Every rank decides alike (the loss and gradient norm are global). Collective.
pub fn unless_finite(
    outcome: &StepOutcome,
    progress: Progress,
    max_nonfinite_steps: u64,
    checkpointer: &Checkpointer,
    state: &TrainState,
) -> Result<(), TrainError> {
    if outcome.stepped {
        return Ok(());
    }
    let step = progress.step - 1;
    warn!(
        step,
        loss = outcome.loss,
        grad_norm = outcome.grad_norm,
        "non-finite loss or gradient: step skipped"
    );
    if progress.nonfinite_in_a_row <= max_nonfinite_steps {
        return Ok(());
    }
    if let Some(dir) = checkpointer.save(progress, state)? {
        warn!(checkpoint = %dir.display(), "stopping: too many non-finite steps; checkpoint holds the last good weights");
    }
    Err(TrainError::Diverged {
        step,
        in_a_row: progress.nonfinite_in_a_row,
    })
}

/// The exit code a shell would report for a process killed by `signal`.
pub fn exit_code(signal: &str) -> i32 {
    match signal {
        "SIGINT" => 128 + signal_hook::consts::SIGINT,
        _ => 128 + signal_hook::consts::SIGTERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Solo;

    #[test]
    fn a_raised_flag_is_agreed() {
        let request = StopRequest::never();
        assert_eq!(request.agreed(&Solo, Device::Cpu).unwrap(), None);
        request.int.store(true, Ordering::SeqCst);
        assert_eq!(request.agreed(&Solo, Device::Cpu).unwrap(), Some("SIGINT"));
        request.term.store(true, Ordering::SeqCst);
        assert_eq!(request.agreed(&Solo, Device::Cpu).unwrap(), Some("SIGTERM"));
        assert_eq!(exit_code("SIGTERM"), 143);
    }
}
