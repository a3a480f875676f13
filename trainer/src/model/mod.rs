//! The CLIP model: a ViT image tower and a causal text transformer, with variable
//! names equal to open_clip 3.3.0's `CLIP` state_dict keys, so a ferroclip safetensors
//! file and an open_clip one are interchangeable.
//!
//! - [`config`]: the `[model]` section ([`ModelConfig`], presets, open_clip JSON) and
//!   the `model = ...` entry of a run config ([`ModelSpec`]);
//! - [`clip`], [`vision`], [`text`], [`transformer`]: the model, one struct per block;
//! - [`weights`]: safetensors in and out, names checked both ways;
//! - [`open_clip`]: open_clip state_dicts in, open_clip folder configs out;
//! - [`macs`]: multiply-accumulates per sample, for sweeps and throughput;
//! - [`recompute`]: activation checkpointing (blocks recomputed in the backward pass).

pub mod clip;
pub mod config;
pub mod macs;
pub mod open_clip;
pub mod recompute;
pub mod text;
pub mod transformer;
pub mod vision;
pub mod weights;

pub use clip::{l2_normalize, Backprop, Clip, ForwardPass, TextBackward, MAX_LOGIT_SCALE};
pub use config::{ConfigError, ModelConfig, ModelSpec, ModelSpecError, TextConfig, VisionConfig};
pub use text::TextTransformer;
pub use vision::VisionTransformer;
