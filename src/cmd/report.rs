//! `ferroclip report`: one self-contained HTML page about a run (launcher::report).
use std::path::PathBuf;

/// Write `runs/<name>/report.html`: charts of loss, learning rate, logit scale,
/// samples/s, TFLOP/s, MFU and eval results, the resolved config, the checkpoints and
/// the skipped samples by reason.
#[derive(clap::Args)]
pub struct Args {
    /// The run: a name under runs/ or a run folder.
    run: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let run = super::status::existing_run(&args.run)?;
    let path = launcher::report::write_report(&run)?;
    println!("report: {}", path.display());
    Ok(())
}
