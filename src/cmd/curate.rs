//! `ferroclip curate`: run a curation pipeline over shards, or `curate match` to print the
//! MetaCLIP entries that captions on stdin match.
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use curator::metaclip::{Matcher, Metadata, DEFAULT_WORDNET_DIR};
use curator::{run_pipeline, CurateConfig, SingleProcess};

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
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
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
    let stages = config.build_stages(base_dir)?;
    let shards = dataloader::expand_shards(&input).with_context(|| format!("--input {input:?}"))?;
    let report = run_pipeline(stages, &shards, &output, args.threads, &SingleProcess)?;
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
