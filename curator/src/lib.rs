//! Data curation stages over webdataset shards (docs/architecture.md §7). No tch.
//!
//! - [`CurateConfig`]: `[[stage]]` tables in order → [`NamedStage`]s ([`CurateConfig::build_stages`]).
//! - [`Stage`]: `observe` every sample (count vectors, summed over threads and, through a
//!   [`CountReducer`], over processes), then `decide` → [`Decision`] `Keep | Drop(reason) |
//!   Rewrite(sample)`; randomness per sample from [`SampleRng`] (seed, key).
//! - [`run_pipeline`]: stages over shards on threads → mirrored output shards, `sizes.json`,
//!   `report.json` ([`CurateReport`]) and `report.png`.
//! - [`curate_samples`]: the same stages over samples held in memory (the Python face).
//! - [`align`]: ALIGN's image/alt-text filters, exact and pHash near-duplicate removal ([`AlignStage`]).
//! - [`dfn`]: DFN model-score filtering (DataComp's top-fraction rule); scorer from the binary.
//! - [`metaclip`]: MetaCLIP metadata (WordNet + user lists), substring [`Matcher`] and balancing.
//! - [`klite`]: K-LITE knowledge: WordNet noun glosses ([`GlossDictionary`]) appended to captions.
//!
//! ```
//! use curator::metaclip::{Matcher, Metadata};
//! let metadata = Metadata::from_entries(["New York", "York", "cat"].map(String::from));
//! let matcher = Matcher::new(&metadata).unwrap();
//! let ids = matcher.matched("A cat in New York.");
//! let names: Vec<&str> = ids.iter().map(|&id| metadata.entry(id)).collect();
//! assert_eq!(names, ["New York", "York", "cat"]);
//! ```
#![deny(missing_docs)]

pub mod align;
pub mod config;
pub mod dfn;
pub mod error;
mod fields;
mod hash;
pub mod in_memory;
pub mod klite;
pub mod metaclip;
pub mod pipeline;
pub mod plot;
pub mod reduce;
pub mod stage;
#[cfg(test)]
mod test_shards;

pub use align::{AlignConfig, AlignStage, ImageEmbedder};
pub use config::{CurateConfig, DfnBuilder, EmbedderBuilder, StageConfig};
pub use dfn::{DfnConfig, DfnStage, PairScorer};
pub use error::CurateError;
pub use in_memory::{curate_samples, SampleOutcome};
pub use klite::{GlossDictionary, KliteConfig, KliteStage};
pub use metaclip::{Matcher, MetaclipConfig, MetaclipStage, Metadata};
pub use pipeline::{run_pipeline, CurateReport, StageReport, REPORT_JSON, REPORT_PNG};
pub use reduce::{CountReducer, SingleProcess};
pub use stage::{Decision, NamedStage, SampleRng, Stage, StagePlot};
