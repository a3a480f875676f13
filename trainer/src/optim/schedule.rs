//! Learning-rate schedules, each a pure function of the step (so a resumed run continues
//! them exactly): linear warmup, then cosine decay to `min_lr` (`cosine`, the default), a
//! constant (`const`), or a constant with a cooldown over the last fraction of the run
//! (`const-cooldown`, OpenCLIP's `--lr-scheduler const-cooldown`; linear or 1−sqrt, Hägele
//! et al. 2024). A constant run's checkpoints can then be cooled down for any length.

use serde::{Deserialize, Serialize};

use crate::field::FieldError;

/// The shape of the learning rate after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Cosine decay from the peak to `min_lr_ratio × lr` at the last step (open_clip's `cosine`).
    #[default]
    Cosine,
    /// The peak learning rate to the end (open_clip's `const`).
    Const,
    /// The peak, then over the last `cooldown_fraction` of the steps a decay to
    /// `min_lr_ratio × lr` (open_clip's `const-cooldown`).
    ConstCooldown,
}

/// How a cooldown falls, as a function of its progress x in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CooldownShape {
    /// 1 − x (open_clip's default `--lr-cooldown-power 1`).
    #[default]
    Linear,
    /// 1 − √x (Hägele et al. 2024: matches a cosine run's loss with a shorter cooldown).
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
}

/// The `[schedule]` section of a train config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Total optimizer steps of the run.
    pub steps: u64,
    /// Linear warmup steps from ~0 to the peak lr.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak lr (cosine and cooldown).
    pub min_lr_ratio: f64,
    /// `cosine` (default), `const` or `const-cooldown`.
    pub kind: ScheduleKind,
    /// `const-cooldown`: the fraction of `steps` at the end spent cooling down, in (0, 1].
    pub cooldown_fraction: f64,
    /// `const-cooldown`: `linear` (default) or `1-sqrt`.
    pub cooldown: CooldownShape,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            warmup_steps: 100,
            min_lr_ratio: 0.0,
            kind: ScheduleKind::Cosine,
            cooldown_fraction: 0.2,
            cooldown: CooldownShape::Linear,
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
        if self.kind == ScheduleKind::ConstCooldown {
            if !(self.cooldown_fraction > 0.0 && self.cooldown_fraction <= 1.0) {
                return Err(FieldError::new(
                    "schedule.cooldown_fraction",
                    format!("must be in (0, 1], got {}", self.cooldown_fraction),
                ));
            }
            if self.cooldown_start() < self.warmup_steps {
                return Err(FieldError::new(
                    "schedule.cooldown_fraction",
                    format!(
                        "a cooldown of the last {} step(s) would start inside the {}-step warmup",
                        self.cooldown_steps(),
                        self.warmup_steps
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `const-cooldown`: the steps of the cooldown (`cooldown_fraction × steps`, rounded, at
    /// least 1).
    pub fn cooldown_steps(&self) -> u64 {
        ((self.cooldown_fraction * self.steps as f64).round() as u64).clamp(1, self.steps)
    }

    /// `const-cooldown`: the first step of the cooldown.
    pub fn cooldown_start(&self) -> u64 {
        self.steps - self.cooldown_steps()
    }

    /// Learning rate for 0-based `step` given the peak `lr`: warmup uses (step+1)/warmup,
    /// then cosine over the remaining steps (open_clip's `cosine_lr`), the peak (`const_lr`),
    /// or the peak and then the cooldown (`const_lr_cooldown`: at cooldown step e of E,
    /// `min + (lr − min)·(1 − e/E)`, or `1 − √(e/E)`).
    pub fn lr_at(&self, step: u64, lr: f64) -> f64 {
        if step < self.warmup_steps {
            return lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let min_lr = lr * self.min_lr_ratio;
        match self.kind {
            ScheduleKind::Cosine => {
                let decay_steps = (self.steps - self.warmup_steps).max(1) as f64;
                let e = ((step - self.warmup_steps) as f64 / decay_steps).min(1.0);
                min_lr + 0.5 * (1.0 + (std::f64::consts::PI * e).cos()) * (lr - min_lr)
            }
            ScheduleKind::Const => lr,
            ScheduleKind::ConstCooldown => {
                let start = self.cooldown_start();
                if step < start {
                    return lr;
                }
                let x = ((step - start) as f64 / self.cooldown_steps() as f64).min(1.0);
                let remaining = match self.cooldown {
                    CooldownShape::Linear => 1.0 - x,
                    CooldownShape::OneMinusSqrt => 1.0 - x.sqrt(),
                };
                min_lr + remaining * (lr - min_lr)
            }
        }
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
            ..ScheduleConfig::default()
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
            ..ScheduleConfig::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("schedule.warmup_steps"));
    }

    /// open_clip's `const_lr_cooldown` (scheduler.py), written out: warmup, the base lr
    /// until `steps − cooldown_steps`, then `(1 − e/es)^power · (base − end) + end`.
    fn open_clip_const_cooldown(step: u64, base: f64, warmup: u64, steps: u64, cooldown: u64, end: f64) -> f64 {
        if step < warmup {
            return base * (step + 1) as f64 / warmup as f64;
        }
        let start = steps - cooldown;
        if step < start {
            return base;
        }
        let (e, es) = ((step - start) as f64, (steps - start) as f64);
        (1.0 - e / es) * (base - end) + end
    }

    #[test]
    fn const_and_const_cooldown_follow_open_clip() {
        let constant = ScheduleConfig {
            steps: 100,
            warmup_steps: 10,
            kind: ScheduleKind::Const,
            ..ScheduleConfig::default()
        };
        assert!((constant.lr_at(4, 2.0) - 1.0).abs() < 1e-12);
        assert!((10..100).all(|t| constant.lr_at(t, 2.0) == 2.0));

        let linear = ScheduleConfig {
            steps: 100,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            kind: ScheduleKind::ConstCooldown,
            cooldown_fraction: 0.3,
            cooldown: CooldownShape::Linear,
        };
        linear.validate().unwrap();
        assert_eq!((linear.cooldown_steps(), linear.cooldown_start()), (30, 70));
        for step in 0..100 {
            let want = open_clip_const_cooldown(step, 2.0, 10, 100, 30, 0.2);
            assert!((linear.lr_at(step, 2.0) - want).abs() < 1e-12, "step {step}");
        }
        assert_eq!(linear.lr_at(69, 2.0), 2.0);
        assert!((linear.lr_at(85, 2.0) - (0.2 + 0.5 * 1.8)).abs() < 1e-12);

        let sqrt = ScheduleConfig {
            cooldown: CooldownShape::OneMinusSqrt,
            ..linear.clone()
        };
        // A quarter of the way into the cooldown: 1 − √0.25 = 0.5 of the way down.
        let exact_quarter = ScheduleConfig {
            steps: 104,
            cooldown_fraction: 40.0 / 104.0,
            ..sqrt.clone()
        };
        assert_eq!(exact_quarter.cooldown_steps(), 40);
        assert!((exact_quarter.lr_at(64 + 10, 2.0) - (0.2 + 0.5 * 1.8)).abs() < 1e-12);
        // Monotone, and below the linear cooldown inside it (1 − √x ≤ 1 − x).
        let lrs: Vec<f64> = (10..100).map(|t| sqrt.lr_at(t, 2.0)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
        assert!((70..100).all(|t| sqrt.lr_at(t, 2.0) <= linear.lr_at(t, 2.0)));
    }

    #[test]
    fn cooldown_settings_are_checked_by_name() {
        let base = ScheduleConfig {
            steps: 100,
            warmup_steps: 10,
            kind: ScheduleKind::ConstCooldown,
            ..ScheduleConfig::default()
        };
        for (fraction, want) in [
            (0.0, "must be in (0, 1]"),
            (1.5, "must be in (0, 1]"),
            (0.95, "inside the 10-step warmup"),
        ] {
            let err = ScheduleConfig {
                cooldown_fraction: fraction,
                ..base.clone()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("schedule.cooldown_fraction") && err.contains(want),
                "{err}"
            );
        }
        // Unused by the other kinds: not checked there.
        assert!(ScheduleConfig {
            cooldown_fraction: 0.0,
            kind: ScheduleKind::Cosine,
            ..base
        }
        .validate()
        .is_ok());
    }
}
