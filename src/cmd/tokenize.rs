//! `ferroclip tokenize`: CLIP BPE ids of each stdin line, one JSON list per line.
//!
//! Each output line runs from `<start_of_text>` (49406) to `<end_of_text>` (49407),
//! without padding; a text longer than the context is cut to `--context-length` ids
//! whose last is `<end_of_text>`, as open_clip's tokenizer does. Lines end at `\n`
//! (a `\r` before it is dropped, like Python's text mode).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Write};

use anyhow::Context;
use dataloader::Tokenizer;

/// Lines read, tokenized in parallel and written per round.
const LINES_PER_ROUND: usize = 16 * 1024;

/// Arguments of `ferroclip tokenize`.
#[derive(clap::Args)]
pub struct Args {
    /// Cut longer texts to this many ids, the last being <end_of_text> (as open_clip).
    #[arg(long, default_value_t = Tokenizer::DEFAULT_CONTEXT_LENGTH)]
    context_length: usize,
    /// Tokenizer threads (default: the available cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// Reads stdin to the end and writes one id list per line to stdout.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.context_length >= 1, "--context-length must be at least 1");
    let threads = match args.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let tokenizer = Tokenizer::new();
    let mut reader = BufReader::with_capacity(1 << 20, std::io::stdin().lock());
    let mut writer = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut lines_before = 0usize;
    loop {
        let raw_lines = read_lines(&mut reader, LINES_PER_ROUND).context("reading stdin")?;
        if raw_lines.is_empty() {
            break;
        }
        let mut texts = Vec::with_capacity(raw_lines.len());
        for (i, raw) in raw_lines.iter().enumerate() {
            let text = std::str::from_utf8(raw)
                .with_context(|| format!("stdin line {} is not valid UTF-8", lines_before + i + 1))?;
            texts.push(text);
        }
        lines_before += raw_lines.len();

        let per_thread = texts.len().div_ceil(threads);
        let outputs: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = texts
                .chunks(per_thread)
                .map(|chunk| scope.spawn(|| format_ids(&tokenizer, chunk, args.context_length)))
                .collect();
            workers
                .into_iter()
                .map(|worker| {
                    worker
                        .join()
                        .map_err(|_| anyhow::anyhow!("a tokenizer thread panicked"))
                })
                .collect::<anyhow::Result<_>>()
        })?;
        for output in &outputs {
            writer.write_all(output.as_bytes()).context("writing stdout")?;
        }
    }
    writer.flush().context("writing stdout")?;
    Ok(())
}

/// Up to `max_lines` lines without their `\n` / `\r\n` ending.
fn read_lines(reader: &mut impl BufRead, max_lines: usize) -> std::io::Result<Vec<Vec<u8>>> {
    let mut lines = Vec::with_capacity(max_lines.min(4096));
    while lines.len() < max_lines {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        lines.push(line);
    }
    Ok(lines)
}

/// `[49406,...,49407]\n` for each text.
fn format_ids(tokenizer: &Tokenizer, texts: &[&str], context_length: usize) -> String {
    let mut out = String::with_capacity(texts.len() * 64);
    for text in texts {
        out.push('[');
        for (i, id) in tokenizer.tokenize_unpadded(text, context_length).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Writing to a String cannot fail.
            let _ = write!(out, "{id}");
        }
        out.push_str("]\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_lose_their_endings_and_keep_empty_ones() {
        let mut input: &[u8] = b"a cat\r\n\nlast";
        let lines = read_lines(&mut input, 10).unwrap();
        assert_eq!(lines, vec![b"a cat".to_vec(), Vec::new(), b"last".to_vec()]);
    }

    #[test]
    fn ids_are_json_lists_from_start_to_end_token() {
        let tokenizer = Tokenizer::new();
        let out = format_ids(&tokenizer, &["a photo of a cat", ""], 77);
        assert_eq!(out, "[49406,320,1125,539,320,2368,49407]\n[49406,49407]\n");
        let cut = format_ids(&tokenizer, &["a photo of a cat"], 3);
        assert_eq!(cut, "[49406,320,49407]\n");
        for line in out.lines() {
            let ids: Vec<i64> = serde_json::from_str(line).unwrap();
            assert_eq!(ids.first(), Some(&49406));
        }
    }
}
