//! `ferroclip curate`: run a curation pipeline over shards, or `curate match` to print the
//! MetaCLIP entries that captions on stdin match.
//!
//! Under `mpirun` (or any launcher that sets RANK/WORLD_SIZE-style variables) every process
//! curates its share of the input shards (shard i on rank i mod world) and the stages'
//! global counts are all-reduced through `trainer::dist`, so the output equals a
//! one-process run's. `dfn` stages score pairs with a ferroclip checkpoint
//! ([`CheckpointScorer`]).
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use curator::dfn::{self, DfnConfig, DfnStage, PairScorer, ScoreError, ScoreSource};
use curator::metaclip::{Matcher, Metadata, DEFAULT_WORDNET_DIR};
use curator::{run_pipeline, AlignConfig, CountReducer, CurateConfig, CurateError, ImageEmbedder, SingleProcess};
use dataloader::loader::IMAGE_EXTENSIONS;
use dataloader::{decode_rgb, ImageTransform, RawSample, DEFAULT_MAX_PIXELS};
use trainer::dist::{Collective, Dist};
use trainer::eval::{self, EvalModel};
use trainer::tch::{Kind, Tensor};

/// Arguments of `ferroclip curate`.
#[derive(clap::Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// Pipeline config (configs/curate/*.toml): `[[stage]]` tables in order.
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    /// Input shards (`data/{00000..00009}.tar`, several joined by `::`).
    #[arg(long, required = true)]
    input: Option<String>,
    /// Output folder for the curated shards, sizes.json, report.json and report.png.
    #[arg(long, required = true)]
    output: Option<PathBuf>,
    /// Worker threads (0 = all cores); also the threads of a `dfn` stage's model.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Saved DFN scores (the `scores/<stage>` folder of an earlier run, or a .jsonl file) for
    /// every `dfn` stage: change the threshold without rescoring.
    #[arg(long, value_name = "DIR|FILE")]
    scores: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Read captions on stdin, print the matched MetaCLIP entries of each as a JSON list.
    Match(MatchArgs),
}

#[derive(clap::Args)]
struct MatchArgs {
    /// `wordnet` (MetaCLIP's numbers 0-99 plus WordNet synset names), or an entry file: one
    /// entry per line, or a JSON list when it ends in `.json`.
    #[arg(long)]
    metadata: String,
    /// Where the WordNet database is (Debian's wordnet-base).
    #[arg(long, default_value = DEFAULT_WORDNET_DIR)]
    wordnet_dir: PathBuf,
}

/// Run the subcommand.
pub fn run(args: Args) -> Result<()> {
    if let Some(Action::Match(m)) = args.action {
        return run_match(&m);
    }
    let (Some(config_path), Some(input), Some(output)) = (args.config, args.input, args.output) else {
        anyhow::bail!("--config, --input and --output are required");
    };
    let config = CurateConfig::from_file(&config_path)?;
    let base_dir = config_path.parent().unwrap_or(Path::new("."));
    let shards = dataloader::expand_shards(&input).with_context(|| format!("--input {input:?}"))?;
    // Checked before scoring, which is slow: the pipeline refuses such a folder too.
    for done in [curator::REPORT_JSON, dataloader::sizes::SIZES_FILE] {
        if output.join(done).exists() {
            anyhow::bail!(
                "output {}: the folder already holds curated shards ({done}); choose an empty folder",
                output.display()
            );
        }
    }
    let has_dfn = config.stages.iter().any(|s| matches!(s, curator::StageConfig::Dfn(_)));
    if args.scores.is_some() && !has_dfn {
        anyhow::bail!("--scores is for dfn stages, and {} has none", config_path.display());
    }
    let reducer = count_reducer()?;
    if args.threads > 0 {
        trainer::tch::set_num_threads(args.threads as i32);
    }
    let mut build_dfn = |name: &str, cfg: &DfnConfig| -> Result<DfnStage, CurateError> {
        let saved = args
            .scores
            .clone()
            .or_else(|| cfg.scores.as_ref().map(|p| base_dir.join(p)));
        if let Some(path) = saved {
            return dfn::build_stage(cfg, ScoreSource::Saved(path), &shards, reducer.as_ref());
        }
        let Some(checkpoint) = &cfg.checkpoint else {
            return Err(CurateError::BadField {
                field: format!("stage {name:?}.checkpoint"),
                reason: "give the filtering model (a run folder) or saved `scores`".into(),
            });
        };
        let checkpoint = base_dir.join(checkpoint);
        let scorer = CheckpointScorer::load(&checkpoint, cfg, args.threads).map_err(|e| CurateError::Scores {
            path: checkpoint.clone(),
            reason: format!("{e:#}"),
        })?;
        let source = ScoreSource::Score {
            scorer: &scorer,
            write_to: output.join("scores").join(name),
        };
        dfn::build_stage(cfg, source, &shards, reducer.as_ref())
    };
    let mut build_embedder =
        |name: &str, cfg: &AlignConfig, checkpoint: &Path| -> Result<Arc<dyn ImageEmbedder>, CurateError> {
            let embedder = CheckpointEmbedder::load(checkpoint, cfg).map_err(|e| CurateError::BadField {
                field: format!("stage {name:?}.near_duplicate_checkpoint"),
                reason: format!("{}: {e:#}", checkpoint.display()),
            })?;
            Ok(Arc::new(embedder))
        };
    let stages = config.build_stages_with(base_dir, &mut build_dfn, &mut build_embedder)?;
    let report = run_pipeline(stages, &shards, &output, args.threads, reducer.as_ref())?;
    tracing::info!(
        input = report.input_samples,
        output = report.output_samples,
        seconds = report.seconds,
        "curated into {}",
        output.display()
    );
    Ok(())
}

fn run_match(args: &MatchArgs) -> Result<()> {
    let metadata = if args.metadata == "wordnet" {
        Metadata::builtin(true, Some(&args.wordnet_dir))?
    } else {
        let mut metadata = Metadata::default();
        metadata.extend_from_file(Path::new(&args.metadata))?;
        metadata
    };
    let matcher = Matcher::new(&metadata)?;
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.split(b'\n') {
        let line = line.context("reading stdin")?;
        // A caption that is not UTF-8 is matched as far as its valid parts go.
        let text = String::from_utf8_lossy(&line);
        let entries: Vec<&str> = matcher
            .matched(&text)
            .into_iter()
            .map(|id| metadata.entry(id))
            .collect();
        serde_json::to_writer(&mut stdout, &entries)?;
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

/// The count reduction across the processes of this run: MPI (through `trainer::dist`)
/// when a launcher started several, else a world of one.
fn count_reducer() -> Result<Box<dyn CountReducer>> {
    let dist = Dist::from_env()?;
    if dist.world_size == 1 {
        return Ok(Box::new(SingleProcess));
    }
    let collective = trainer::dist::connect(&dist).context("connecting the curation processes")?;
    tracing::info!(
        rank = dist.rank,
        world = dist.world_size,
        "curating as one of several processes"
    );
    Ok(Box::new(CollectiveCounts { collective }))
}

/// Sums count vectors with the trainer's collectives (an i64 CPU tensor all-reduce).
struct CollectiveCounts {
    collective: Box<dyn Collective>,
}

impl CountReducer for CollectiveCounts {
    fn rank(&self) -> usize {
        self.collective.rank()
    }

    fn world_size(&self) -> usize {
        self.collective.world_size()
    }

    fn all_reduce_sum(&self, counts: &mut [u64]) -> Result<(), CurateError> {
        // Counts are far below 2^63; a value that is not would wrap in the i64 tensor.
        let signed: Vec<i64> = counts
            .iter()
            .map(|&c| i64::try_from(c).map_err(|_| CurateError::Reduce(format!("count {c} does not fit in an i64"))))
            .collect::<Result<_, _>>()?;
        let mut tensor = Tensor::from_slice(&signed);
        self.collective
            .all_reduce_sum_(&mut tensor)
            .map_err(|e| CurateError::Reduce(e.to_string()))?;
        let summed = Vec::<i64>::try_from(&tensor).map_err(|e| CurateError::Reduce(e.to_string()))?;
        if summed.len() != counts.len() {
            return Err(CurateError::Reduce(format!(
                "sent {} counts, got {} back",
                counts.len(),
                summed.len()
            )));
        }
        for (count, sum) in counts.iter_mut().zip(summed) {
            *count = u64::try_from(sum).map_err(|_| CurateError::Reduce(format!("negative sum {sum}")))?;
        }
        Ok(())
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, CurateError> {
        let reduce_err = |e: trainer::dist::DistError| CurateError::Reduce(e.to_string());
        let world = self.collective.world_size();
        // Lengths first; then the bytes, padded to the longest, in chunks that keep every
        // MPI count far below i32::MAX.
        let len = i64::try_from(local.len()).map_err(|_| CurateError::Reduce("table too large".into()))?;
        let lengths = self
            .collective
            .all_gather(&Tensor::from_slice(&[len]))
            .map_err(reduce_err)?;
        let lengths: Vec<usize> = Vec::<i64>::try_from(&lengths)
            .map_err(|e| CurateError::Reduce(e.to_string()))?
            .into_iter()
            .map(|n| n as usize)
            .collect();
        if lengths.len() != world {
            return Err(CurateError::Reduce(format!(
                "gathered {} lengths from {world} ranks",
                lengths.len()
            )));
        }
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let mut parts: Vec<Vec<u8>> = lengths.iter().map(|&n| Vec::with_capacity(n)).collect();
        const CHUNK: usize = 256 << 20;
        let mut offset = 0;
        while offset < longest {
            let size = CHUNK.min(longest - offset);
            let mut chunk = vec![0u8; size];
            let end = local.len().min(offset + size);
            if offset < end {
                chunk[..end - offset].copy_from_slice(&local[offset..end]);
            }
            let gathered = self
                .collective
                .all_gather(&Tensor::from_slice(&chunk))
                .map_err(reduce_err)?;
            let gathered = Vec::<u8>::try_from(&gathered).map_err(|e| CurateError::Reduce(e.to_string()))?;
            for (rank, part) in parts.iter_mut().enumerate() {
                let theirs_end = lengths[rank].min(offset + size);
                if offset < theirs_end {
                    let base = rank * size;
                    part.extend_from_slice(&gathered[base..base + theirs_end - offset]);
                }
            }
            offset += size;
        }
        Ok(parts)
    }
}

/// Image embeddings of a ferroclip checkpoint for the `align` stage's near-duplicate rule.
pub struct CheckpointEmbedder {
    // libtorch modules run one forward at a time here; each batch uses its intra-op threads.
    model: Mutex<EvalModel>,
    transform: ImageTransform,
    max_pixels: u64,
}

impl CheckpointEmbedder {
    /// Loads the run or checkpoint folder `checkpoint` on the stage's device.
    pub fn load(checkpoint: &Path, cfg: &AlignConfig) -> Result<Self> {
        let device = super::eval::parse_device(cfg.device.as_deref())?;
        let model = eval::load_checkpoint(checkpoint, device)?;
        let transform = ImageTransform::eval(model.image_size());
        Ok(Self {
            model: Mutex::new(model),
            transform,
            max_pixels: cfg.max_pixels,
        })
    }
}

impl ImageEmbedder for CheckpointEmbedder {
    fn embed(&self, images: &[&[u8]]) -> std::result::Result<Vec<Option<Vec<f32>>>, String> {
        // Decoded on the calling (observing) thread; the eval transform draws no random numbers.
        let mut pixels = Vec::new();
        let mut decoded = Vec::with_capacity(images.len());
        for bytes in images {
            let ok = decode_rgb(bytes, self.max_pixels)
                .map(|rgb| pixels.extend(self.transform.apply(&rgb, &mut rand::rngs::mock::StepRng::new(0, 0))))
                .is_ok();
            decoded.push(ok);
        }
        let count = decoded.iter().filter(|&&ok| ok).count();
        let mut rows = Vec::new();
        if count > 0 {
            let model = self
                .model
                .lock()
                .map_err(|_| "the model lock is poisoned".to_string())?;
            let embedded = model.embed_images(&pixels, count).to_kind(Kind::Float).contiguous();
            let flat = Vec::<f32>::try_from(embedded.view([-1])).map_err(|e| e.to_string())?;
            let dim = flat.len() / count;
            rows = flat.chunks_exact(dim).map(<[f32]>::to_vec).collect();
        }
        let mut rows = rows.into_iter();
        Ok(decoded
            .into_iter()
            .map(|ok| if ok { rows.next() } else { None })
            .collect())
    }
}

/// DFN's pair score from a ferroclip checkpoint: the cosine similarity of the L2-normalised
/// image embedding and the embedding of the caption's first line.
pub struct CheckpointScorer {
    model: EvalModel,
    transform: ImageTransform,
    caption_member: String,
    decode_threads: usize,
}

impl CheckpointScorer {
    /// Loads the run or checkpoint folder `checkpoint` on the stage's device.
    pub fn load(checkpoint: &Path, cfg: &DfnConfig, threads: usize) -> Result<Self> {
        let device = super::eval::parse_device(cfg.device.as_deref())?;
        let model = eval::load_checkpoint(checkpoint, device)?;
        let transform = ImageTransform::eval(model.image_size());
        let decode_threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        Ok(Self {
            model,
            transform,
            caption_member: cfg.caption_member.clone(),
            decode_threads,
        })
    }
}

/// The caption's first non-empty line and the eval-transformed image, or None when either is
/// missing or bad.
fn prepare_pair(sample: &RawSample, caption_member: &str, transform: &ImageTransform) -> Option<(String, Vec<f32>)> {
    let text = std::str::from_utf8(sample.members.get(caption_member)?).ok()?;
    let caption = text.lines().map(str::trim).find(|l| !l.is_empty())?.to_string();
    let bytes = IMAGE_EXTENSIONS.iter().find_map(|ext| sample.members.get(*ext))?;
    let rgb = decode_rgb(bytes, DEFAULT_MAX_PIXELS).ok()?;
    // The eval transform draws no random numbers; the generator only fills the signature.
    let pixels = transform.apply(&rgb, &mut rand::rngs::mock::StepRng::new(0, 0));
    Some((caption, pixels))
}

impl PairScorer for CheckpointScorer {
    fn score(&self, batch: &[RawSample]) -> Result<Vec<Option<f32>>, ScoreError> {
        // Decoding is the CPU-heavy part besides the model: spread it over threads.
        let (member, transform) = (self.caption_member.as_str(), &self.transform);
        let prepared: Vec<Option<(String, Vec<f32>)>> =
            eval::map_in_threads(batch, self.decode_threads, |s| prepare_pair(s, member, transform));
        let mut captions = Vec::new();
        let mut pixels = Vec::new();
        for (caption, image) in prepared.iter().flatten() {
            captions.push(caption.clone());
            pixels.extend_from_slice(image);
        }
        if captions.is_empty() {
            return Ok(vec![None; batch.len()]);
        }
        let images = self.model.embed_images(&pixels, captions.len());
        let texts = self.model.embed_texts(&captions, captions.len());
        let cosine = (images * texts)
            .sum_dim_intlist(&[1i64][..], false, Kind::Float)
            .f_to_kind(Kind::Float)
            .map_err(|e| ScoreError(e.to_string()))?;
        let values = Vec::<f32>::try_from(&cosine).map_err(|e| ScoreError(e.to_string()))?;
        let mut values = values.into_iter();
        Ok(prepared
            .iter()
            .map(|p| p.as_ref().and_then(|_| values.next()))
            .collect())
    }
}
