//! The one error every config section returns from `validate()`: the field at fault and
//! why, e.g. `data.batch_size: must be > 0`.

/// A config value that cannot work, naming its field by its dotted path in the train
/// config (`optim.lr`, `data.train_weights`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The dotted path of the field, e.g. `schedule.warmup_steps`.
    pub field: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl FieldError {
    /// `field: reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
