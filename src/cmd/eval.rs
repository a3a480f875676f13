//! `ferroclip eval`: zero-shot classification and image↔text retrieval of a model on eval
//! shards, with CLIP_benchmark's metric definitions and key names.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use launcher::RunDir;
use serde_json::{json, Value};
use trainer::eval::{self, EvalModel, RetrievalReport, ZeroShotReport};
use trainer::tch::Device;

// The template used when no `--templates` file is given.
use eval::config::DEFAULT_TEMPLATE;

/// Which model to load: a run/checkpoint folder, or a config plus weights.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Run or checkpoint folder holding model.safetensors (and config.toml, here or up to two
    /// folders above).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["model_config", "weights"])]
    checkpoint: Option<PathBuf>,
    /// Model config: a run config.toml, a model .toml, an open_clip .json, or a preset name.
    #[arg(long, value_name = "FILE|PRESET", requires = "weights")]
    model_config: Option<String>,
    /// Weights (.safetensors): ferroclip's or an open_clip state_dict.
    #[arg(long, value_name = "FILE", requires = "model_config")]
    weights: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N (default: cuda if available, else cpu).
    #[arg(long)]
    device: Option<String>,
    /// With --checkpoint: evaluate the moving average of the weights (`ema.safetensors`,
    /// `optim.ema_decay`); recorded in the run as `ema_<task>`.
    #[arg(long, requires = "checkpoint")]
    ema: bool,
}

impl ModelArgs {
    /// Loads the model the flags name; errors name the missing folder or file.
    pub fn load(&self) -> anyhow::Result<EvalModel> {
        let device = parse_device(self.device.as_deref())?;
        match (&self.checkpoint, &self.model_config, &self.weights) {
            (Some(dir), _, _) => trainer::checkpoint::locate_checkpoint(dir)
                .and_then(|files| if self.ema { files.ema() } else { Ok(files) })
                .map_err(anyhow::Error::from)
                .and_then(|files| Ok(eval::load_checkpoint_files(files, device)?))
                .with_context(|| format!("loading checkpoint {}", dir.display())),
            (None, Some(config), Some(weights)) => {
                let config = eval::load_model_config(config)?;
                Ok(EvalModel::load(config, weights, device)?)
            }
            _ => bail!("give --checkpoint DIR, or --model-config FILE with --weights FILE"),
        }
    }

    /// What was loaded, for the output file.
    pub fn describe(&self) -> Value {
        match &self.checkpoint {
            Some(dir) => json!({ "checkpoint": dir, "ema": self.ema }),
            None => json!({ "model_config": self.model_config, "weights": self.weights }),
        }
    }
}

/// `cpu`, `cuda` or `cuda:N`; none = CUDA when present, else the CPU.
pub(crate) fn parse_device(name: Option<&str>) -> anyhow::Result<Device> {
    Ok(match name {
        None => Device::cuda_if_available(),
        Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => match other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(index) => Device::Cuda(index),
            None => bail!("device {other:?}: expected cpu, cuda or cuda:N"),
        },
    })
}

/// Evaluate a model: zero-shot classification and/or retrieval.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Zero-shot eval shards (image + `.cls` label per sample); brace/`::`/folder spec.
    #[arg(long, value_name = "SHARDS", requires = "classnames")]
    zeroshot: Option<String>,
    /// Class names, one per line; a label is the 0-based line number.
    #[arg(long, value_name = "FILE")]
    classnames: Option<PathBuf>,
    /// Prompt templates, one per line, each containing `{c}` (default: "a photo of a {c}.").
    #[arg(long, value_name = "FILE")]
    templates: Option<PathBuf>,
    /// K-LITE knowledge: append " ; {c} , {gloss}" to each prompt of a class whose name is a
    /// WordNet noun (the definition of its first sense).
    #[arg(long, requires = "zeroshot")]
    knowledge: bool,
    /// Where the WordNet database is for --knowledge (Debian's wordnet-base).
    #[arg(long, value_name = "DIR", default_value = curator::metaclip::DEFAULT_WORDNET_DIR)]
    wordnet_dir: PathBuf,
    /// Retrieval eval shards (image + `.txt` with one caption per line).
    #[arg(long, value_name = "SHARDS")]
    retrieval: Option<String>,
    /// The k of recall@k for retrieval.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    recall_k: Vec<usize>,
    /// Images (and texts) encoded per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Write all metrics, chance levels and dataset sizes as JSON here.
    #[arg(long, value_name = "FILE.json")]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.zeroshot.is_none() && args.retrieval.is_none() {
        bail!("nothing to evaluate: give --zeroshot SHARDS (with --classnames) and/or --retrieval SHARDS");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // Read the small inputs before loading the model, so their errors come fast.
    let zeroshot_inputs = match &args.zeroshot {
        Some(spec) => {
            let shards = dataloader::expand_shards(spec).with_context(|| format!("--zeroshot {spec}"))?;
            let classnames_path = args
                .classnames
                .as_deref()
                .context("--zeroshot needs --classnames FILE")?;
            let classnames = read_classnames(classnames_path)?;
            let templates = match &args.templates {
                Some(path) => read_templates(path)?,
                None => vec![DEFAULT_TEMPLATE.to_string()],
            };
            let glosses = if args.knowledge {
                class_glosses(&classnames, &args.wordnet_dir)?
            } else {
                HashMap::new()
            };
            Some((
                spec.clone(),
                shards,
                classnames_path.display().to_string(),
                classnames,
                templates,
                glosses,
            ))
        }
        None => None,
    };
    let retrieval_shards = match &args.retrieval {
        Some(spec) => Some((
            spec.clone(),
            dataloader::expand_shards(spec).with_context(|| format!("--retrieval {spec}"))?,
        )),
        None => None,
    };
    let model = args.model.load()?;

    let mut output = serde_json::Map::new();
    output.insert("model".into(), args.model.describe());
    let mut table = String::new();
    if let Some((spec, shards, classnames_file, classnames, templates, glosses)) = zeroshot_inputs {
        let report = eval::tasks::evaluate_zeroshot_with_knowledge(
            &model,
            &shards,
            &classnames,
            &templates,
            &glosses,
            args.batch_size,
        )
        .with_context(|| format!("zero-shot evaluation on {spec} with class names {classnames_file}"))?;
        write_zeroshot_table(&mut table, &report, templates.len());
        let mut json = zeroshot_json(&spec, &report, templates.len());
        if args.knowledge {
            let _ = writeln!(
                table,
                "  knowledge: {} of {} classes have a WordNet gloss",
                glosses.len(),
                classnames.len()
            );
            json["knowledge_classes"] = json!(glosses.len());
        }
        output.insert("zeroshot".into(), json);
    }
    if let Some((spec, shards)) = retrieval_shards {
        let report = eval::evaluate_retrieval(&model, &shards, &args.recall_k, args.batch_size)
            .with_context(|| format!("retrieval evaluation on {spec}"))?;
        write_retrieval_table(&mut table, &report);
        output.insert("retrieval".into(), retrieval_json(&spec, &report));
    }
    print!("{table}");
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&Value::Object(output.clone()))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some((run, step)) = args.model.checkpoint.as_deref().and_then(RunDir::of_weights) {
        let output = match args.model.ema {
            true => output.into_iter().map(|(task, v)| (format!("ema_{task}"), v)).collect(),
            false => output,
        };
        record_in_run(&run, step, output)?;
    }
    Ok(())
}

/// The results of an eval of a run's weights, kept with the run: a line of its eval.jsonl
/// (`step` and the `--out` JSON) and TensorBoard scalars `eval/<task>/<metric>` in its tb/,
/// at the step of the weights. `ferroclip report` plots them.
fn record_in_run(run: &RunDir, step: u64, output: serde_json::Map<String, Value>) -> anyhow::Result<()> {
    let mut record = serde_json::Map::from_iter([("step".to_string(), json!(step))]);
    record.extend(output);
    let path = run.eval();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let record = Value::Object(record);
    writeln!(file, "{record}").with_context(|| format!("writing {}", path.display()))?;
    let scalars = trainer::tensorboard::eval_scalars(&record);
    trainer::tensorboard::EventWriter::for_evals(&run.tensorboard())?.scalars(step, &scalars)?;
    println!(
        "recorded at step {step} in {} and {}",
        path.display(),
        run.tensorboard().display()
    );
    Ok(())
}

/// K-LITE glosses of the class names that are WordNet nouns (class name → gloss).
fn class_glosses(classnames: &[String], wordnet_dir: &Path) -> anyhow::Result<HashMap<String, String>> {
    let dictionary = curator::GlossDictionary::load(wordnet_dir).context("--knowledge needs WordNet glosses")?;
    let glosses: HashMap<String, String> = classnames
        .iter()
        .filter_map(|name| {
            let term = dictionary.lookup(name)?;
            Some((name.clone(), dictionary.gloss(term).to_string()))
        })
        .collect();
    tracing::info!(
        classes = classnames.len(),
        with_gloss = glosses.len(),
        "K-LITE knowledge for the class names"
    );
    Ok(glosses)
}

/// Class names, one per line (see [`eval::config::read_classnames`]).
fn read_classnames(path: &Path) -> anyhow::Result<Vec<String>> {
    eval::config::read_classnames(path).map_err(|e| anyhow::anyhow!("class names {}", e.reason))
}

/// Templates, one per non-blank line, each with a `{c}` placeholder.
fn read_templates(path: &Path) -> anyhow::Result<Vec<String>> {
    eval::config::read_templates(path).map_err(|e| anyhow::anyhow!("templates {}", e.reason))
}

fn write_rows(out: &mut String, metrics: &BTreeMap<String, f64>, chance: &BTreeMap<String, f64>, order: &[String]) {
    let _ = writeln!(out, "  {:<28} {:>8} {:>8}", "metric", "value", "chance");
    for key in order {
        if let Some(value) = metrics.get(key) {
            let chance = chance.get(key).map_or("-".to_string(), |c| format!("{c:.4}"));
            let _ = writeln!(out, "  {key:<28} {value:>8.4} {chance:>8}");
        }
    }
}

fn write_zeroshot_table(out: &mut String, report: &ZeroShotReport, num_templates: usize) {
    let m = &report.metrics;
    let _ = writeln!(
        out,
        "zero-shot classification: {} images, {} classes, {} template(s), {} skipped",
        m.num_samples,
        m.num_classes,
        num_templates,
        report.skipped.total()
    );
    let order = ["acc1", "acc5", "mean_per_class_recall"].map(String::from);
    write_rows(out, &m.to_clip_benchmark_map(), &m.chance(), &order);
    if m.acc5.is_none() {
        let _ = writeln!(out, "  (acc5 not reported: fewer than 5 classes, as CLIP_benchmark)");
    }
}

fn write_retrieval_table(out: &mut String, report: &RetrievalReport) {
    let m = &report.metrics;
    let _ = writeln!(
        out,
        "retrieval: {} images, {} texts, {} skipped (image_retrieval = text→image, text_retrieval = image→text)",
        m.num_images,
        m.num_texts,
        report.skipped.total()
    );
    let order: Vec<String> = m
        .recall
        .iter()
        .flat_map(|r| {
            [
                format!("image_retrieval_recall@{}", r.k),
                format!("text_retrieval_recall@{}", r.k),
            ]
        })
        .collect();
    write_rows(out, &m.to_clip_benchmark_map(), &m.chance_map(), &order);
}

fn zeroshot_json(spec: &str, report: &ZeroShotReport, num_templates: usize) -> Value {
    let m = &report.metrics;
    json!({
        "shards": spec,
        "metrics": m.to_clip_benchmark_map(),
        "chance": m.chance(),
        "num_samples": m.num_samples,
        "num_classes": m.num_classes,
        "num_templates": num_templates,
        "skipped": report.skipped,
    })
}

fn retrieval_json(spec: &str, report: &RetrievalReport) -> Value {
    let m = &report.metrics;
    json!({
        "shards": spec,
        "metrics": m.to_clip_benchmark_map(),
        "chance": m.chance_map(),
        "num_images": m.num_images,
        "num_texts": m.num_texts,
        "skipped": report.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classnames_with_a_hole_are_rejected_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("classes.txt");
        std::fs::write(&path, "cat\n\ndog\n").unwrap();
        let err = read_classnames(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("classes.txt"), "{err}");
        std::fs::write(&path, "cat\ndog\n\n").unwrap();
        assert_eq!(read_classnames(&path).unwrap(), ["cat", "dog"]);
    }

    #[test]
    fn templates_need_the_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("templates.txt");
        std::fs::write(&path, "a photo of a {c}.\n\nart of a {c}\n").unwrap();
        assert_eq!(read_templates(&path).unwrap().len(), 2);
        std::fs::write(&path, "a photo of a {c}.\na photo\n").unwrap();
        let err = read_templates(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn class_glosses_cover_the_wordnet_nouns_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = "00000000 05 n 01 ice_cream 0 000 | frozen dessert; \"she ate ice cream\"  \n";
        std::fs::write(dir.path().join("data.noun"), data).unwrap();
        std::fs::write(dir.path().join("index.noun"), "ice_cream n 1 0 1 0 00000000  \n").unwrap();
        std::fs::write(dir.path().join("noun.exc"), "").unwrap();
        let classes = ["Ice_creams".to_string(), "grinning face".to_string()];
        let glosses = class_glosses(&classes, dir.path()).unwrap();
        assert_eq!(
            glosses,
            HashMap::from([("Ice_creams".to_string(), "frozen dessert".to_string())])
        );
        let err = format!("{:#}", class_glosses(&classes, &dir.path().join("none")).unwrap_err());
        assert!(err.contains("--knowledge") && err.contains("wordnet-base"), "{err}");
    }

    #[test]
    fn device_names_parse() {
        assert_eq!(parse_device(Some("cpu")).unwrap(), Device::Cpu);
        assert_eq!(parse_device(Some("cuda:1")).unwrap(), Device::Cuda(1));
        assert!(parse_device(Some("gpu")).is_err());
    }
}
