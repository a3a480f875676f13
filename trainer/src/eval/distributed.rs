//! Evaluation during training (`[eval]`), on every rank: each rank embeds its share of the
//! eval shards (shard i on rank i mod W) and of the zero-shot classes (class c on rank
//! c mod W) with the model it is training, the features are gathered on rank 0, and rank 0
//! computes the metrics once — the same metrics as `ferroclip eval` of the same weights in
//! one process. No rank waits idle for another's whole evaluation: all embed at once.
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::config::{read_classnames, read_templates, EvalConfig, DEFAULT_TEMPLATE};
use super::data::{read_eval_set, EvalSkips, Needs};
use super::error::{EvalError, TrainEvalError};
use super::metrics::{build_zeroshot_classifier, retrieval_metrics, zeroshot_metrics};
use super::model::Encoder;
use crate::dist::{Collective, DistError};
use crate::field::FieldError;

/// What a run evaluates while it trains, read and checked when it starts.
pub struct TrainEval {
    every: u64,
    at_end: bool,
    batch_size: usize,
    recall_k: Vec<usize>,
    zeroshot: Option<ZeroShotSet>,
    retrieval: Option<(String, Vec<PathBuf>)>,
}

struct ZeroShotSet {
    spec: String,
    shards: Vec<PathBuf>,
    classnames: Vec<String>,
    templates: Vec<String>,
}

impl TrainEval {
    /// The evaluation `cfg` describes (`None` when it has nothing to evaluate): shard specs
    /// expanded and lists read now, so a bad path fails the run at its start.
    pub fn new(cfg: &EvalConfig) -> Result<Option<Self>, TrainEvalError> {
        cfg.validate()?;
        if !cfg.enabled() {
            return Ok(None);
        }
        let shards = |field: &str, spec: &str| {
            dataloader::expand_shards(spec).map_err(|e| FieldError::new(format!("eval.{field}"), e.to_string()))
        };
        let zeroshot = match (&cfg.zeroshot, &cfg.classnames) {
            (Some(spec), Some(classnames)) => Some(ZeroShotSet {
                spec: spec.clone(),
                shards: shards("zeroshot", spec)?,
                classnames: read_classnames(classnames).map_err(|e| FieldError::new("eval.classnames", e.reason))?,
                templates: match &cfg.templates {
                    Some(path) => read_templates(path).map_err(|e| FieldError::new("eval.templates", e.reason))?,
                    None => vec![DEFAULT_TEMPLATE.to_string()],
                },
            }),
            _ => None,
        };
        let retrieval = match &cfg.retrieval {
            Some(spec) => Some((spec.clone(), shards("retrieval", spec)?)),
            None => None,
        };
        Ok(Some(Self {
            every: cfg.every,
            at_end: cfg.at_end,
            batch_size: cfg.batch_size,
            recall_k: cfg.recall_k.clone(),
            zeroshot,
            retrieval,
        }))
    }

    /// Whether the weights after `step` are evaluated.
    pub fn due(&self, step: u64, last_step: u64) -> bool {
        (self.every > 0 && step % self.every == 0) || (self.at_end && step == last_step)
    }

    /// Evaluates `model` after `step` on every rank (collective); rank 0 gets the record
    /// (`step`, `eval_seconds`, and per task `metrics`, `chance`, sizes and skips, as
    /// `ferroclip eval --out` writes them), the others `None`.
    pub fn run(
        &self,
        model: &Encoder,
        step: u64,
        coll: &dyn Collective,
        device: Device,
    ) -> Result<Option<Value>, TrainEvalError> {
        let started = Instant::now();
        let mut record = serde_json::Map::new();
        record.insert("step".into(), json!(step));
        if let Some(set) = &self.zeroshot {
            if let Some(task) = self.zeroshot(set, model, coll, device).map_err(|e| e.at(step))? {
                record.insert("zeroshot".into(), task);
            }
        }
        if let Some((spec, shards)) = &self.retrieval {
            if let Some(task) = self
                .retrieval(spec, shards, model, coll, device)
                .map_err(|e| e.at(step))?
            {
                record.insert("retrieval".into(), task);
            }
        }
        record.insert("eval_seconds".into(), json!(started.elapsed().as_secs_f64()));
        Ok((coll.rank() == 0).then_some(Value::Object(record)))
    }

    fn zeroshot(
        &self,
        set: &ZeroShotSet,
        model: &Encoder,
        coll: &dyn Collective,
        device: Device,
    ) -> Result<Option<Value>, Failure> {
        let (rank, world) = (coll.rank(), coll.world_size());
        // This rank's classes' columns of the classifier, as rows.
        let mine: Vec<String> = set.classnames.iter().skip(rank).step_by(world).cloned().collect();
        let columns = match mine.is_empty() {
            true => Tensor::zeros([0, model.config.embed_dim], (Kind::Float, Device::Cpu)),
            false => {
                build_zeroshot_classifier(|texts| model.embed_texts(texts, self.batch_size), &mine, &set.templates)?
                    .transpose(0, 1)
                    .contiguous()
            }
        };
        // This rank's shards' image features and labels, shard by shard.
        let mut feature_blocks = Vec::new();
        let mut label_blocks = Vec::new();
        let mut skipped = EvalSkips::default();
        for shard in share(&set.shards, rank, world) {
            let mut features = Vec::new();
            let mut labels = Vec::new();
            let skips = read_eval_set(&[shard], model.image_size(), self.batch_size, Needs::Label, |batch| {
                for (key, label) in batch.keys.iter().zip(&batch.labels) {
                    let label = label.unwrap_or(-1);
                    if label < 0 || label as usize >= set.classnames.len() {
                        return Err(EvalError::LabelOutOfRange {
                            sample: key.clone(),
                            label,
                            num_classes: set.classnames.len(),
                        });
                    }
                    labels.push(label as f32);
                }
                features.push(model.embed_images(&batch.images, batch.len()));
                Ok(())
            })?;
            add_skips(&mut skipped, &skips);
            feature_blocks.push(cat_rows(&features, model.config.embed_dim));
            label_blocks.push(Tensor::from_slice(&labels).view([-1, 1]));
        }

        let columns = gather_rows(&columns, coll, device)?;
        let features = gather_by_shard(&feature_blocks, model.config.embed_dim, set.shards.len(), coll, device)?;
        let labels = gather_by_shard(&label_blocks, 1, set.shards.len(), coll, device)?;
        let skipped = gather_skips(&skipped, coll, device)?;
        let (Some(features), Some(labels)) = (features, labels) else {
            return Ok(None);
        };
        // Class c was rank (c mod W)'s (c div W)-th column.
        let classifier: Vec<Tensor> = (0..set.classnames.len())
            .map(|c| columns[c % world].get((c / world) as i64))
            .collect();
        let classifier = Tensor::stack(&classifier, 1);
        let labels: Vec<i64> = Vec::<f32>::try_from(Tensor::cat(&labels, 0).view([-1]))
            .map_err(EvalError::from)?
            .into_iter()
            .map(|l| l as i64)
            .collect();
        if labels.is_empty() {
            return Err(EvalError::NoSamples(format!(
                "zero-shot classification: no sample with an image and a .cls label in {}",
                set.spec
            ))
            .into());
        }
        let metrics = zeroshot_metrics(&Tensor::cat(&features, 0), &classifier, &labels)?;
        Ok(Some(json!({
            "shards": set.spec,
            "metrics": metrics.to_clip_benchmark_map(),
            "chance": metrics.chance(),
            "num_samples": metrics.num_samples,
            "num_classes": metrics.num_classes,
            "num_templates": set.templates.len(),
            "skipped": skipped,
        })))
    }

    fn retrieval(
        &self,
        spec: &str,
        shards: &[PathBuf],
        model: &Encoder,
        coll: &dyn Collective,
        device: Device,
    ) -> Result<Option<Value>, Failure> {
        let (rank, world) = (coll.rank(), coll.world_size());
        let dim = model.config.embed_dim;
        let (mut image_blocks, mut text_blocks, mut owner_blocks) = (Vec::new(), Vec::new(), Vec::new());
        let mut skipped = EvalSkips::default();
        for shard in share(shards, rank, world) {
            let (mut images, mut texts, mut owners) = (Vec::new(), Vec::new(), Vec::<f32>::new());
            let mut num_images = 0usize;
            let skips = read_eval_set(
                &[shard],
                model.image_size(),
                self.batch_size,
                Needs::Captions,
                |batch| {
                    let mut captions = Vec::new();
                    for (offset, sample_captions) in batch.captions.iter().enumerate() {
                        for caption in sample_captions {
                            captions.push(caption.clone());
                            owners.push((num_images + offset) as f32);
                        }
                    }
                    images.push(model.embed_images(&batch.images, batch.len()));
                    texts.push(model.embed_texts(&captions, self.batch_size));
                    num_images += batch.len();
                    Ok(())
                },
            )?;
            add_skips(&mut skipped, &skips);
            image_blocks.push(cat_rows(&images, dim));
            text_blocks.push(cat_rows(&texts, dim));
            owner_blocks.push(Tensor::from_slice(&owners).view([-1, 1]));
        }
        let images = gather_by_shard(&image_blocks, dim, shards.len(), coll, device)?;
        let texts = gather_by_shard(&text_blocks, dim, shards.len(), coll, device)?;
        let owners = gather_by_shard(&owner_blocks, 1, shards.len(), coll, device)?;
        let skipped = gather_skips(&skipped, coll, device)?;
        let (Some(images), Some(texts), Some(owners)) = (images, texts, owners) else {
            return Ok(None);
        };
        // In shard order, as one process reads them; a shard's image indices count from the
        // images of the shards before it.
        let mut text_to_image = Vec::new();
        let mut before = 0usize;
        for (shard_images, shard_owners) in images.iter().zip(&owners) {
            let local = Vec::<f32>::try_from(shard_owners.view([-1])).map_err(EvalError::from)?;
            text_to_image.extend(local.into_iter().map(|i| before + i as usize));
            before += shard_images.size()[0] as usize;
        }
        if before == 0 {
            return Err(EvalError::NoSamples(format!(
                "retrieval: no sample with an image and a .txt caption in {spec}"
            ))
            .into());
        }
        let metrics = retrieval_metrics(
            &Tensor::cat(&images, 0),
            &Tensor::cat(&texts, 0),
            &text_to_image,
            &self.recall_k,
        )?;
        Ok(Some(json!({
            "shards": spec,
            "metrics": metrics.to_clip_benchmark_map(),
            "chance": metrics.chance_map(),
            "num_images": metrics.num_images,
            "num_texts": metrics.num_texts,
            "skipped": skipped,
        })))
    }
}

/// A failure inside one task, before the step is known.
enum Failure {
    Eval(EvalError),
    Dist(DistError),
}

impl From<EvalError> for Failure {
    fn from(e: EvalError) -> Self {
        Failure::Eval(e)
    }
}

impl From<DistError> for Failure {
    fn from(e: DistError) -> Self {
        Failure::Dist(e)
    }
}

impl Failure {
    fn at(self, step: u64) -> TrainEvalError {
        match self {
            Failure::Eval(source) => TrainEvalError::Eval { step, source },
            Failure::Dist(e) => TrainEvalError::Dist(e),
        }
    }
}

/// Shards `rank`, `rank + world`, ...
fn share(shards: &[PathBuf], rank: usize, world: usize) -> Vec<PathBuf> {
    shards.iter().skip(rank).step_by(world.max(1)).cloned().collect()
}

/// `more` added into `total`.
fn add_skips(total: &mut EvalSkips, more: &EvalSkips) {
    total.data.merge(&more.data);
    total.missing_label += more.missing_label;
}

/// Every shard's rows on rank 0, in shard order (`None` elsewhere): `blocks` are this
/// rank's shards' rows, `width` columns each (shards rank, rank + W, ...), out of `shards`
/// in all. Collective.
fn gather_by_shard(
    blocks: &[Tensor],
    width: i64,
    shards: usize,
    coll: &dyn Collective,
    device: Device,
) -> Result<Option<Vec<Tensor>>, DistError> {
    let world = coll.world_size();
    let counts: Vec<f32> = blocks.iter().map(|b| b.size()[0] as f32).collect();
    let rows = cat_rows(blocks, width);
    let all_rows = gather_rows(&rows, coll, device)?;
    let all_counts = gather_rows(&Tensor::from_slice(&counts).view([-1, 1]), coll, device)?;
    if coll.rank() != 0 {
        return Ok(None);
    }
    // Split each rank's rows back into its shards' blocks.
    let mut per_rank: Vec<Vec<Tensor>> = Vec::with_capacity(world);
    for (rows, counts) in all_rows.iter().zip(&all_counts) {
        let counts = Vec::<f32>::try_from(counts.view([-1])).unwrap_or_default();
        let mut start = 0i64;
        let mut mine = Vec::new();
        for n in counts {
            mine.push(rows.narrow(0, start, n as i64));
            start += n as i64;
        }
        per_rank.push(mine);
    }
    Ok(Some(
        (0..shards)
            .map(|i| per_rank[i % world][i / world].shallow_clone())
            .collect(),
    ))
}

/// `parts` stacked as rows, (0, dim) when there are none.
fn cat_rows(parts: &[Tensor], dim: i64) -> Tensor {
    match parts.is_empty() {
        true => Tensor::zeros([0, dim], (Kind::Float, Device::Cpu)),
        false => Tensor::cat(parts, 0),
    }
}

/// Every rank's `rows` (n_r, d) f32 on rank 0, in rank order (row counts may differ:
/// padded to the longest for the all-gather). Collective.
fn gather_rows(rows: &Tensor, coll: &dyn Collective, device: Device) -> Result<Vec<Tensor>, DistError> {
    if coll.world_size() == 1 {
        return Ok(vec![rows.shallow_clone()]);
    }
    let (n, dim) = (rows.size()[0], rows.size()[1]);
    let counts = coll.all_gather(&Tensor::from_slice(&[n]).to_device(device))?;
    let counts = Vec::<i64>::try_from(counts.to_device(Device::Cpu)).unwrap_or_default();
    let longest = counts.iter().copied().max().unwrap_or(0).max(1);
    let padded = Tensor::zeros([longest, dim], (Kind::Float, Device::Cpu));
    if n > 0 {
        padded.narrow(0, 0, n).copy_(&rows.to_kind(Kind::Float));
    }
    let gathered = coll.all_gather(&padded.to_device(device))?.to_device(Device::Cpu);
    let gathered = gathered.view([coll.world_size() as i64, longest, dim]);
    Ok(counts
        .iter()
        .enumerate()
        .map(|(rank, &count)| gathered.get(rank as i64).narrow(0, 0, count))
        .collect())
}

/// Every rank's skip counts, summed, on rank 0 (as JSON). Collective.
fn gather_skips(skipped: &EvalSkips, coll: &dyn Collective, device: Device) -> Result<Value, DistError> {
    let mine = serde_json::to_value(skipped).unwrap_or(Value::Null);
    if coll.world_size() == 1 {
        return Ok(mine);
    }
    // Counts by reason as a fixed vector (f32: exact below 2^24 per reason): missing_label,
    // then the data reasons in order.
    let reasons = dataloader::SkipReason::ALL;
    let mut counts: Vec<f32> = vec![skipped.missing_label as f32];
    counts.extend(reasons.iter().map(|r| skipped.data.get(*r) as f32));
    let mut t = Tensor::from_slice(&counts).to_device(device);
    coll.all_reduce_sum_(&mut t)?;
    let summed = Vec::<f32>::try_from(t.to_device(Device::Cpu)).unwrap_or_default();
    let mut total = EvalSkips {
        missing_label: summed.first().copied().unwrap_or(0.0) as u64,
        ..EvalSkips::default()
    };
    for (reason, &n) in reasons.iter().zip(summed.iter().skip(1)) {
        total.data.add_n(*reason, n as u64);
    }
    Ok(serde_json::to_value(&total).unwrap_or(Value::Null))
}
