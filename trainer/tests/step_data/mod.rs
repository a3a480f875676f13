//! What the train-step tests share: every step's global batch as plain values, each rank's
//! slices of it as a [`BatchSource`], models from a seed, and parameter snapshots to compare.

#![allow(dead_code)] // each test file uses its own part

use std::collections::{BTreeMap, VecDeque};

use tch::nn;
use tch::{Device, Kind, Tensor};
use trainer::data::{BatchSource, TensorBatch};
use trainer::{Clip, ModelConfig, TrainError};

pub static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn seeded<T>(seed: i64, make: impl FnOnce() -> T) -> T {
    let _guard = SEEDED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    make()
}

/// Every step's global batch, as plain values shared by the threads.
pub struct Data {
    image_size: i64,
    context: i64,
    steps: usize,
    images: Vec<Vec<f32>>,
    tokens: Vec<Vec<i64>>,
}

impl Data {
    /// `steps` global batches of `global` rows for `cfg`'s image size and context, from `seed`.
    pub fn new(cfg: &ModelConfig, steps: usize, global: i64, seed: i64) -> Data {
        let (image_size, context) = (cfg.vision.image_size, cfg.text.context_length);
        seeded(seed, || {
            let (mut images, mut tokens) = (Vec::new(), Vec::new());
            for _ in 0..steps {
                let img = Tensor::randn([global, 3, image_size, image_size], (Kind::Float, Device::Cpu));
                images.push(Vec::<f32>::try_from(img.flatten(0, -1)).expect("f32 images"));
                let mut rows = Vec::new();
                for row in 0..global {
                    let words = 3 + (row % (context - 5));
                    let ids = Tensor::randint_low(1, 40_000, [words], (Kind::Int64, Device::Cpu));
                    let mut line = vec![49406i64];
                    line.extend(Vec::<i64>::try_from(&ids).expect("i64 ids"));
                    line.push(49407);
                    line.resize(context as usize, 0);
                    rows.extend(line);
                }
                tokens.push(rows);
            }
            Data {
                image_size,
                context,
                steps,
                images,
                tokens,
            }
        })
    }

    /// [`Data::batch`] as (images, tokens) tensors.
    pub fn tensors(&self, step: usize, start: i64, rows: i64) -> (Tensor, Tensor) {
        let batch = self.batch(step, start, rows);
        (batch.images(), batch.tokens)
    }

    /// Rows `start..start + rows` of step `step`'s global batch.
    pub fn batch(&self, step: usize, start: i64, rows: i64) -> TensorBatch {
        let pixels = (3 * self.image_size * self.image_size) as usize;
        let c = self.context as usize;
        let (a, b) = (start as usize, (start + rows) as usize);
        TensorBatch::from_flat(
            &self.images[step][a * pixels..b * pixels],
            &self.tokens[step][a * c..b * c],
            rows as usize,
            self.image_size as usize,
            step as u64,
        )
    }
}

/// Batches in hand: rank r's K micro-batches of every step, rows r·K·B.. of the global batch.
pub struct Slices(pub VecDeque<TensorBatch>);

impl BatchSource for Slices {
    fn next_batch(&mut self) -> Result<TensorBatch, TrainError> {
        Ok(self.0.pop_front().expect("a test batch per micro-step"))
    }
}

pub fn rank_slices(data: &Data, rank: usize, micro_rows: i64, accum: usize) -> Slices {
    let mut batches = VecDeque::new();
    for step in 0..data.steps {
        for k in 0..accum {
            let start = (rank * accum + k) as i64 * micro_rows;
            batches.push_back(data.batch(step, start, micro_rows));
        }
    }
    Slices(batches)
}

pub fn snapshot(vs: &nn::VarStore) -> BTreeMap<String, Vec<f32>> {
    vs.variables()
        .into_iter()
        .map(|(name, t)| (name, Vec::<f32>::try_from(t.detach().flatten(0, -1)).expect("f32")))
        .collect()
}

pub fn new_model(cfg: &ModelConfig, seed: i64) -> (nn::VarStore, Clip) {
    seeded(seed, || {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Clip::new(&vs.root(), cfg);
        (vs, model)
    })
}

pub fn max_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for (name, x) in a {
        let d = x
            .iter()
            .zip(&b[name])
            .map(|(p, q)| (p - q).abs() as f64)
            .fold(0.0, f64::max);
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}
