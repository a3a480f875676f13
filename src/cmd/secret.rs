//! `ferroclip secret FILE`: a new job secret for the rendezvous, in a file only its owner
//! can read (for `launch --nnodes --secret-file`, or FERROCLIP_JOB_SECRET_FILE).
use std::path::PathBuf;

/// Arguments of `ferroclip secret`.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write it; must not exist yet (a secret is never overwritten).
    file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let secret = protocol::JobSecret::generate()?;
    secret.write_new_file(&args.file)?;
    eprintln!(
        "wrote a new job secret to {} (mode 600); copy it to every node and pass --secret-file {}",
        args.file.display(),
        args.file.display()
    );
    Ok(())
}
