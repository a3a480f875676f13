//! `ferroclip embed`: L2-normalised image or text embeddings, as JSON lines or a `.npy` array.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use trainer::eval::{self, EvalModel};
use trainer::tch::Tensor;

use super::eval::ModelArgs;
use super::npy::npy_header;

/// Image file extensions taken from a folder given to `--images`.
const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Write normalised embeddings of images or texts.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files, or folders (their jpg/jpeg/png/webp files, sorted by name).
    #[arg(long, num_args = 1.., value_name = "PATH", required_unless_present = "texts", conflicts_with = "texts")]
    images: Vec<PathBuf>,
    /// A text file: one input text per line.
    #[arg(long, value_name = "FILE")]
    texts: Option<PathBuf>,
    /// Output: `.jsonl` (one {"input", "embedding"} per line, in input order) or `.npy`
    /// (float32, shape (N, E)).
    #[arg(long, value_name = "OUT.jsonl|OUT.npy")]
    out: PathBuf,
    /// Inputs encoded per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

/// The two output formats.
enum Output {
    JsonLines(BufWriter<File>),
    Npy(BufWriter<File>),
}

impl Output {
    fn create(path: &Path, rows: usize, dim: usize) -> anyhow::Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "jsonl" && ext != "npy" {
            bail!("--out {}: the file name must end in .jsonl or .npy", path.display());
        }
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = BufWriter::new(file);
        if ext == "npy" {
            writer.write_all(&npy_header("<f4", &[rows, dim]))?;
            Ok(Output::Npy(writer))
        } else {
            Ok(Output::JsonLines(writer))
        }
    }

    /// Appends one batch: `inputs[i]` names row i of `embeddings` (B, E).
    fn write(&mut self, inputs: &[String], embeddings: &Tensor) -> anyhow::Result<()> {
        let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(embeddings).context("reading embeddings")?;
        match self {
            Output::JsonLines(w) => {
                for (input, row) in inputs.iter().zip(rows) {
                    serde_json::to_writer(&mut *w, &serde_json::json!({ "input": input, "embedding": row }))?;
                    w.write_all(b"\n")?;
                }
            }
            Output::Npy(w) => {
                for value in rows.iter().flatten() {
                    w.write_all(&value.to_le_bytes())?;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Output::JsonLines(mut w) | Output::Npy(mut w) => w.flush()?,
        }
        Ok(())
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let texts = match &args.texts {
        Some(path) => Some(read_texts(path)?),
        None => None,
    };
    let images = match &texts {
        Some(_) => Vec::new(),
        None => list_images(&args.images)?,
    };
    let model = args.model.load()?;
    let dim = model.config.embed_dim as usize;
    match texts {
        Some(texts) => {
            let mut out = Output::create(&args.out, texts.len(), dim)?;
            for chunk in texts.chunks(args.batch_size) {
                out.write(chunk, &model.embed_texts(chunk, args.batch_size))?;
            }
            out.finish()?;
            eprintln!(
                "wrote {} text embeddings (dim {dim}) to {}",
                texts.len(),
                args.out.display()
            );
        }
        None => {
            let mut out = Output::create(&args.out, images.len(), dim)?;
            for chunk in images.chunks(args.batch_size) {
                let (names, embeddings) = embed_image_files(&model, chunk)?;
                out.write(&names, &embeddings)?;
            }
            out.finish()?;
            eprintln!(
                "wrote {} image embeddings (dim {dim}) to {}",
                images.len(),
                args.out.display()
            );
        }
    }
    Ok(())
}

fn embed_image_files(model: &EvalModel, paths: &[PathBuf]) -> anyhow::Result<(Vec<String>, Tensor)> {
    let mut pixels = Vec::new();
    for path in paths {
        pixels.extend(eval::load_image_file(path, model.image_size())?);
    }
    let names = paths.iter().map(|p| p.display().to_string()).collect();
    Ok((names, model.embed_images(&pixels, paths.len())))
}

/// One text per line, in order (a final newline does not add an empty text).
fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading texts {}", path.display()))?;
    let texts: Vec<String> = text.lines().map(str::to_string).collect();
    if texts.is_empty() {
        bail!("texts {}: no lines", path.display());
    }
    Ok(texts)
}

/// Files as given; folders expanded to their image files sorted by name.
fn list_images(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("listing {}", input.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            found.sort();
            if found.is_empty() {
                bail!(
                    "--images {}: the folder has no jpg/jpeg/png/webp files",
                    input.display()
                );
            }
            images.extend(found);
        } else if input.is_file() {
            images.push(input.clone());
        } else {
            bail!("--images {}: no such file or folder", input.display());
        }
    }
    if images.is_empty() {
        bail!("no images given");
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_expand_to_sorted_image_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.png", "a.JPG", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let found = list_images(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = found.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["a.JPG", "b.png"]);
        assert!(list_images(&[dir.path().join("missing.png")])
            .unwrap_err()
            .to_string()
            .contains("missing.png"));
    }
}
