//! Shards in, batches out. No tch.
//!
//! - [`expand_shards`]: `data/{00000..00099}.tar::more/`, → shard files.
//! - [`Loader`] (from a [`LoaderConfig`]): background threads read webdataset tars
//!   ([`tar_reader`]), decode and transform images ([`imaging`]), tokenize captions
//!   ([`Tokenizer`]) and yield [`Batch`]es of flat buffers (each image decoded straight into
//!   its slot of the batch; [`BatchImages`] go back to the loader for reuse when dropped;
//!   [`PixelOutput::RawU8`] gives u8 levels for normalisation on the device); it
//!   is an `Iterator<Item = Batch>`,
//!   and [`Loader::skip_counts`] tells what bad data was skipped, by [`SkipReason`].
//!   [`Loader::state`] gives its exact position ([`LoaderState`], serde) after any batch;
//!   [`Loader::resume`] continues from it with the very same batches. [`Sampling`] picks
//!   every shard once per epoch, or draws weighted shards with replacement (virtual epochs).
//! - [`ShardWriter`]: samples (or existing samples, byte for byte) → `00000.tar[.zst], ...` +
//!   `sizes.json` ([`WriterOptions`]: samples/bytes per shard, zstd, img2dataset keys);
//!   [`ImageRewrite`] resizes/re-encodes on the way; [`read_manifest`] reads the
//!   JSONL/CSV/parquet/folder inputs of `ferroclip shard`. [`count_samples`] sizes a dataset.
//!
//! ```
//! use dataloader::{Loader, LoaderConfig, ShardSample, ShardWriter};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut png = Vec::new();
//! image::RgbImage::new(8, 8)
//!     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
//! let mut writer = ShardWriter::new(dir.path(), 100)?;
//! writer.write(&ShardSample {
//!     key: None,
//!     image: png,
//!     image_ext: "png".into(),
//!     captions: vec!["a black square".into()],
//!     label: Some(0),
//!     json: Default::default(),
//! })?;
//! let summary = writer.finish()?;
//!
//! let mut cfg = LoaderConfig::new(summary.shards, false);
//! cfg.batch_size = 4;
//! cfg.image_size = 4;
//! cfg.context_length = 0; // captions only, no token ids
//! let batches: Vec<_> = Loader::new(cfg)?.collect();
//! assert_eq!(batches[0].keys, ["000000000"]);
//! assert_eq!(batches[0].images.len(), 3 * 4 * 4);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod tokenizer;
pub use tokenizer::{Tokenizer, TokenizerError};

pub mod chw;
pub mod error;
pub mod fuzz_harness;
pub mod image_rewrite;
pub mod imaging;
mod jpeg_structure;
pub mod loader;
pub mod manifest;
pub mod position;
pub mod shard_source;
pub mod shard_spec;
pub mod sizes;
pub mod tar_reader;
#[cfg(feature = "turbojpeg")]
pub mod turbojpeg;
pub mod writer;

pub use chw::{normalized_level, CLIP_PIXEL_SCALE, CLIP_PIXEL_SHIFT};
pub use error::{DataError, SkipCounts, SkipReason};
pub use image_rewrite::{ImageRewrite, ReencodeSpec, RewrittenImage};
pub use imaging::{
    decode_rgb, decode_rgb_over_white, ImageTransform, JpegDraft, OutputPixel, CLIP_MEAN, CLIP_STD, DEFAULT_MAX_PIXELS,
};
pub use loader::{
    virtual_epoch_batches, Batch, BatchImages, CaptionSource, Loader, LoaderConfig, Partitions, PixelOutput, Sampling,
};
pub use manifest::{read_manifest, read_manifest_with, row_count_hint, ManifestColumns, ManifestRow, RowSkip};
pub use position::LoaderState;
pub use shard_source::{open_shard, ShardKind, ShardOpenError, ShardStream};
pub use shard_spec::{dataset_size, expand_shards, expand_sources, ShardSource};
pub use sizes::count_samples;
pub use tar_reader::{RawSample, ReadLimits, DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_SHARD_BYTES};
pub use writer::{
    parse_byte_size, Compression, KeyScheme, ShardSample, ShardWriter, WriteError, WriteSummary, WriterOptions,
};
