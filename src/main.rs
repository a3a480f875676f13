//! `ferroclip`: one binary, one subcommand per pipeline stage (docs/architecture.md §1).
use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(name = "ferroclip", version, about = "Curate image-text data and train CLIP models")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write webdataset shards (.tar or .tar.zst, plus sizes.json) from a folder, CSV/TSV, JSONL or
    /// parquet manifest, or re-shard existing shards.
    Shard(cmd::shard::Args),
    /// Train one worker from a TOML config.
    Train(cmd::train::Args),
    /// Start N local training workers (directly or through mpirun) and supervise them.
    Launch(cmd::launch::Args),
    /// Write an sbatch script for a training run and submit it to SLURM.
    Submit(cmd::submit::Args),
    /// Show a submitted run's SLURM state, last metrics and newest checkpoint.
    Status(cmd::status::Args),
    /// Write runs/<name>/report.html: charts of the metrics, eval results, config, checkpoints.
    Report(cmd::report::Args),
    /// Zero-shot classification and retrieval evaluation of a checkpoint.
    Eval(cmd::eval::Args),
    /// Write normalised image or text embeddings.
    Embed(cmd::embed::Args),
    /// Export a checkpoint as an open_clip-loadable folder (safetensors + JSON config).
    Export(cmd::export::Args),
    /// Scaling-law sweeps: plan, run and collect a grid of train configs.
    Sweep(cmd::sweep::Args),
    /// Curate shards through a pipeline of stages (MetaCLIP, ...); `curate match` prints matched entries.
    Curate(cmd::curate::Args),
    /// Inspect datasets: `data inspect SPEC` reads every sample and reports counts, skips and
    /// image size / caption length distributions.
    Data(cmd::data::Args),
    /// Tokenize lines from stdin with the CLIP BPE tokenizer (one JSON id list per line).
    Tokenize(cmd::tokenize::Args),
    /// Write a new job secret (for `launch --nnodes --secret-file`) to a file only you can read.
    Secret(cmd::secret::Args),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: launched workers write into pipes and log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Shard(a) => cmd::shard::run(a),
        Cmd::Train(a) => cmd::train::run(a),
        Cmd::Launch(a) => cmd::launch::run(a),
        Cmd::Submit(a) => cmd::submit::run(a),
        Cmd::Status(a) => cmd::status::run(a),
        Cmd::Report(a) => cmd::report::run(a),
        Cmd::Eval(a) => cmd::eval::run(a),
        Cmd::Embed(a) => cmd::embed::run(a),
        Cmd::Export(a) => cmd::export::run(a),
        Cmd::Sweep(a) => cmd::sweep::run(a),
        Cmd::Curate(a) => cmd::curate::run(a),
        Cmd::Data(a) => cmd::data::run(a),
        Cmd::Tokenize(a) => cmd::tokenize::run(a),
        Cmd::Secret(a) => cmd::secret::run(a),
    };
    if let Err(e) = result {
        // A closed stdout (e.g. `| head`) is a clean exit, not an error.
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
