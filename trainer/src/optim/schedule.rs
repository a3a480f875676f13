//! Learning-rate schedule: linear warmup, then cosine decay to `min_lr`.

use serde::{Deserialize, Serialize};

use crate::field::FieldError;

/// The `[schedule]` section of a train config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Total optimizer steps of the run.
    pub steps: u64,
    /// Linear warmup steps from ~0 to the peak lr.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak lr.
    pub min_lr_ratio: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            warmup_steps: 100,
            min_lr_ratio: 0.0,
        }
    }
}

impl ScheduleConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.steps == 0 {
            return Err(FieldError::new("schedule.steps", "must be > 0"));
        }
        if self.warmup_steps > self.steps {
            return Err(FieldError::new(
                "schedule.warmup_steps",
                format!("{} must not exceed schedule.steps ({})", self.warmup_steps, self.steps),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(FieldError::new(
                "schedule.min_lr_ratio",
                format!("must be in [0, 1], got {}", self.min_lr_ratio),
            ));
        }
        Ok(())
    }

    /// Learning rate for 0-based `step` given the peak `lr` (open_clip's
    /// `cosine_lr`: warmup uses (step+1)/warmup, cosine over the remaining steps).
    pub fn lr_at(&self, step: u64, lr: f64) -> f64 {
        if step < self.warmup_steps {
            return lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = (self.steps - self.warmup_steps).max(1) as f64;
        let e = ((step - self.warmup_steps) as f64 / decay_steps).min(1.0);
        let min_lr = lr * self.min_lr_ratio;
        min_lr + 0.5 * (1.0 + (std::f64::consts::PI * e).cos()) * (lr - min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = ScheduleConfig {
            steps: 110,
            warmup_steps: 10,
            min_lr_ratio: 0.0,
        };
        assert!((s.lr_at(0, 1.0) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(9, 1.0) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(10, 1.0) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(60, 1.0) - 0.5).abs() < 1e-12);
        assert!(s.lr_at(109, 1.0) < 0.001);
        // monotone after warmup
        let lrs: Vec<f64> = (10..110).map(|t| s.lr_at(t, 1.0)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn warmup_longer_than_run_is_rejected() {
        let s = ScheduleConfig {
            steps: 5,
            warmup_steps: 10,
            min_lr_ratio: 0.0,
        };
        assert!(s.validate().unwrap_err().to_string().contains("schedule.warmup_steps"));
    }
}
