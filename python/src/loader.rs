//! `ferroclip.Loader` and `ferroclip.Batch`: the Rust loader under a Python training loop.
//!
//! The loader's threads run in Rust; `next()` waits for a batch with the GIL released.
//! The stream is the one `ferroclip train` reads for the same settings (the canonical stream
//! or per-rank streams, [`RankedStream`]). `state_dict()` / `load_state_dict()` follow
//! torchdata's StatefulDataLoader: the state after the batches yielded so far, and a
//! loader that continues from it with the very same batches.
//!
//! One Python object is one stream. Several Python threads may iterate it: each `next()`
//! takes the next batch under a lock, so every batch goes to exactly one thread.
use std::sync::{Mutex, MutexGuard};

use dataloader::loader::ranks::{RankedStream, StreamKind};
use dataloader::{CaptionSource, LoaderConfig, LoaderState, PixelOutput};
use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::array::Array;
use crate::errors::data_error;

/// `state_dict()["format"]`: what a loaded state must say it is.
const STATE_FORMAT: &str = "ferroclip.Loader/1";

/// A running (or not yet started) Rust loader and what Python has taken from it.
struct Stream {
    config: LoaderConfig,
    /// Started on the first batch or state request (or by `load_state_dict`).
    loader: Option<dataloader::Loader>,
    batches_yielded: u64,
}

impl Stream {
    fn loader(&mut self) -> PyResult<&mut dataloader::Loader> {
        match &mut self.loader {
            Some(loader) => Ok(loader),
            empty => Ok(empty.insert(dataloader::Loader::new(self.config.clone()).map_err(data_error)?)),
        }
    }
}

/// Batches of images, token ids, keys and labels from webdataset shards, made on Rust
/// threads. See the module documentation of `ferroclip`.
#[pyclass(frozen, module = "ferroclip")]
pub struct Loader {
    stream: Mutex<Stream>,
    normalize_on_device: bool,
}

impl Loader {
    /// The stream, locked with the GIL released: a thread waiting here (or for a batch)
    /// never holds the GIL, so another thread holding the lock can always finish.
    fn with_stream<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut Stream) -> PyResult<R> + Send) -> PyResult<R> {
        py.detach(|| {
            let mut guard: MutexGuard<'_, Stream> = self
                .stream
                .lock()
                .map_err(|_| PyRuntimeError::new_err("the loader failed in another thread; make a new one"))?;
            f(&mut guard)
        })
    }
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (
        spec, *, batch_size, image_size=224, train=true, seed=0, rank=0, world_size=1,
        stream="canonical", partitions=0, caption="txt", context_length=77, threads=4,
        normalize="loader", shuffle_buffer=None, drop_last=None, resampled=false,
        epoch_samples=None, weights=None, max_pixels=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        spec: &str,
        batch_size: usize,
        image_size: u32,
        train: bool,
        seed: u64,
        rank: usize,
        world_size: usize,
        stream: &str,
        partitions: usize,
        caption: &str,
        context_length: usize,
        threads: usize,
        normalize: &str,
        shuffle_buffer: Option<usize>,
        drop_last: Option<bool>,
        resampled: bool,
        epoch_samples: Option<u64>,
        weights: Option<String>,
        max_pixels: Option<u64>,
    ) -> PyResult<Self> {
        let kind = StreamKind::parse(stream)
            .ok_or_else(|| PyValueError::new_err(format!("stream: {stream:?} is not \"canonical\" or \"per_rank\"")))?;
        let pixel_output = PixelOutput::parse(normalize).ok_or_else(|| {
            PyValueError::new_err(format!(
                "normalize: {normalize:?} is not \"loader\" (float32, CLIP-normalised) or \"device\" (uint8 levels)"
            ))
        })?;
        let mut settings = LoaderConfig::new(Vec::new(), train);
        settings.batch_size = batch_size;
        settings.image_size = image_size;
        settings.seed = seed;
        settings.context_length = context_length;
        settings.threads = threads;
        settings.pixel_output = pixel_output;
        settings.caption = CaptionSource::parse(caption)
            .ok_or_else(|| PyValueError::new_err(format!("caption: {caption:?} is not \"txt\" or \"json:<field>\"")))?;
        if let Some(n) = shuffle_buffer {
            settings.shuffle_buffer = n;
        }
        if let Some(drop) = drop_last {
            settings.drop_last = drop;
        }
        if let Some(n) = max_pixels {
            settings.max_pixels = n;
        }
        let ranked = RankedStream {
            rank,
            world_size,
            kind,
            partitions,
            resampled,
            epoch_samples,
            weights,
        };
        let config = ranked.loader_config(spec, settings).map_err(data_error)?;
        config.validate().map_err(data_error)?;
        Ok(Self {
            stream: Mutex::new(Stream {
                config,
                loader: None,
                batches_yielded: 0,
            }),
            normalize_on_device: pixel_output == PixelOutput::RawU8,
        })
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// The next batch; waits with the GIL released. Train mode never ends; eval mode ends
    /// after one pass.
    fn __next__(&self, py: Python<'_>) -> PyResult<Batch> {
        let batch = self.with_stream(py, |stream| {
            let batch = stream.loader()?.next_batch();
            if batch.is_some() {
                stream.batches_yielded += 1;
            }
            Ok(batch)
        })?;
        let batch = batch.ok_or_else(|| PyStopIteration::new_err(()))?;
        Batch::new(py, batch, self.normalize_on_device)
    }

    /// The position after the batches yielded so far, as plain Python values (fit for
    /// `torch.save` or JSON): `{"format", "batches_yielded", "loader"}`.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (json, batches) = self.with_stream(py, |stream| {
            let state = stream.loader()?.state();
            let json =
                serde_json::to_string(&state).map_err(|e| PyRuntimeError::new_err(format!("loader state: {e}")))?;
            Ok((json, stream.batches_yielded))
        })?;
        let loads = py.import("json")?.getattr("loads")?;
        let dict = PyDict::new(py);
        dict.set_item("format", STATE_FORMAT)?;
        dict.set_item("batches_yielded", batches)?;
        dict.set_item("loader", loads.call1((json,))?)?;
        Ok(dict)
    }

    /// Continue from `state` (a `state_dict()` of a loader with the same settings): the
    /// next batches are the ones that loader would have yielded. Settings that decide the
    /// batches must match; the error names the one that differs.
    fn load_state_dict(&self, py: Python<'_>, state: Bound<'_, PyAny>) -> PyResult<()> {
        let bad = |what: String| PyValueError::new_err(format!("load_state_dict: {what}"));
        let format: String = state
            .get_item("format")
            .map_err(|_| bad("no \"format\" key: not a ferroclip.Loader state_dict".into()))?
            .extract()?;
        if format != STATE_FORMAT {
            return Err(bad(format!("format {format:?}, this loader reads {STATE_FORMAT:?}")));
        }
        let batches: u64 = state.get_item("batches_yielded")?.extract()?;
        let dumps = py.import("json")?.getattr("dumps")?;
        let json: String = dumps.call1((state.get_item("loader")?,))?.extract()?;
        let saved: LoaderState =
            serde_json::from_str(&json).map_err(|e| bad(format!("the \"loader\" entry does not parse: {e}")))?;
        self.with_stream(py, move |stream| {
            // Start at once, so that a state that does not fit fails here, by name.
            let resumed = dataloader::Loader::resume(stream.config.clone(), &saved).map_err(data_error)?;
            stream.loader = Some(resumed);
            stream.batches_yielded = batches;
            Ok(())
        })
    }

    /// Samples skipped so far, by reason (`undecodable_image`, `missing_caption`, ...).
    #[getter]
    fn skip_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let counts = self.with_stream(py, |stream| {
            Ok(stream
                .loader()?
                .skip_counts()
                .iter()
                .map(|(reason, n)| (reason.as_str(), n))
                .collect::<Vec<_>>())
        })?;
        let dict = PyDict::new(py);
        for (reason, n) in counts {
            dict.set_item(reason, n)?;
        }
        Ok(dict)
    }

    /// Batches yielded so far (continued from a loaded state).
    #[getter]
    fn batches_yielded(&self, py: Python<'_>) -> PyResult<u64> {
        self.with_stream(py, |stream| Ok(stream.batches_yielded))
    }

    /// The shard files this loader reads (this rank's, or the whole stream's).
    #[getter]
    fn shards(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.with_stream(py, |stream| {
            Ok(stream.config.shards.iter().map(|p| p.display().to_string()).collect())
        })
    }

    /// Partitions of the canonical stream (`None` for per-rank streams and eval).
    #[getter]
    fn partitions(&self, py: Python<'_>) -> PyResult<Option<usize>> {
        self.with_stream(py, |stream| Ok(stream.config.partitions.map(|p| p.count)))
    }
}

/// One batch. `images` is `(B, 3, S, S)` float32 CLIP-normalised (or uint8 levels with
/// `normalize="device"`), `tokens` `(B, context_length)` int64; both are `ferroclip.Array`s
/// that `numpy.asarray` and `torch.from_dlpack` view without a copy.
#[pyclass(frozen, module = "ferroclip")]
pub struct Batch {
    images: Py<Array>,
    tokens: Py<Array>,
    keys: Vec<String>,
    labels: Vec<Option<i64>>,
    captions: Vec<Vec<String>>,
    epoch: u64,
}

impl Batch {
    fn new(py: Python<'_>, batch: dataloader::Batch, normalize_on_device: bool) -> PyResult<Self> {
        let n = batch.len();
        let side = batch.image_size as usize;
        let shape = [n, 3, side, side];
        let images = if normalize_on_device {
            Array::from_u8_images(batch.images_u8, &shape)
        } else {
            Array::from_f32_images(batch.images, &shape)
        };
        let tokens = Array::from_i64(batch.tokens, &[n, batch.context_length]);
        Ok(Self {
            images: Py::new(py, images)?,
            tokens: Py::new(py, tokens)?,
            keys: batch.keys,
            labels: batch.labels,
            captions: batch.captions,
            epoch: batch.epoch,
        })
    }
}

#[pymethods]
impl Batch {
    /// Pixels, `(B, 3, S, S)`.
    #[getter]
    fn images(&self, py: Python<'_>) -> Py<Array> {
        self.images.clone_ref(py)
    }

    /// Token ids, `(B, context_length)` (`(B, 0)` with `context_length=0`).
    #[getter]
    fn tokens(&self, py: Python<'_>) -> Py<Array> {
        self.tokens.clone_ref(py)
    }

    /// Sample keys.
    #[getter]
    fn keys(&self) -> Vec<String> {
        self.keys.clone()
    }

    /// Class labels from `.cls` members (`None` where a sample has none).
    #[getter]
    fn labels(&self) -> Vec<Option<i64>> {
        self.labels.clone()
    }

    /// Every caption of each sample.
    #[getter]
    fn captions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, &self.captions)
    }

    /// The (virtual) epoch the samples belong to.
    #[getter]
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn __len__(&self) -> usize {
        self.keys.len()
    }

    fn __repr__(&self) -> String {
        format!("ferroclip.Batch({} samples, epoch {})", self.keys.len(), self.epoch)
    }
}
