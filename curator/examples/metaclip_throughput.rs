//! MetaCLIP matching, counting and balancing over in-memory captions, each step timed apart:
//! the Rust side of scripts/bench/curation/bench.py's like-for-like rows.
//!
//! ```text
//! cargo run --release -p curator --example metaclip_throughput -- \
//!     --entries entries.txt --captions captions.txt [--t 20000] [--threads "1 2"] \
//!     [--matchers "trie ac-auto"] [--repeat 3]
//! ```
//!
//! `entries.txt`: one entry a line (read as `ferroclip curate` reads an entry file).
//! `captions.txt`: one caption a line (ended by '\n'), UTF-8. All captions are read into memory first.
//! For every matcher and thread count it prints one JSON line: seconds (wall) and CPU
//! seconds (summed over threads, CLOCK_THREAD_CPUTIME_ID) of
//! - `build`: the matcher (token trie or Aho–Corasick automaton) from the metadata,
//! - `match`: the matched entry ids of every caption, kept in one flat list,
//! - `count`: c_e, texts per entry (per-thread vectors, then summed),
//! - `balance`: p_e = min(1, t / c_e) and the keep decision of every caption,
//!
//! each the least of `--repeat` runs (wall and CPU apart), with the outcome (texts matched, entries matched, entries over t, kept) to check parity.
//! Matchers: `trie` (what `ferroclip curate` uses), `ac-auto`, `ac-cnfa`, `ac-nnfa`, `ac-dfa`
//! (the `aho_corasick` crate's automaton kinds, one overlapping search per caption).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use curator::metaclip::{
    balanced_keep, keep_probability, AhoCorasickMatcher, AutomatonKind, MatchScratch, Matcher, Metadata,
};
use curator::SampleRng;

/// CPU time of the calling thread in nanoseconds (CLOCK_THREAD_CPUTIME_ID; 0 if unavailable).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A matcher under test.
enum Any {
    Trie(Matcher),
    AhoCorasick(AhoCorasickMatcher),
}

impl Any {
    fn build(name: &str, metadata: &Metadata) -> Result<Self, String> {
        let kind = match name {
            "trie" => return Matcher::new(metadata).map(Any::Trie).map_err(|e| e.to_string()),
            "ac-auto" => AutomatonKind::Auto,
            "ac-cnfa" => AutomatonKind::ContiguousNfa,
            "ac-nnfa" => AutomatonKind::NoncontiguousNfa,
            "ac-dfa" => AutomatonKind::Dfa,
            other => return Err(format!("--matchers: unknown matcher {other:?}")),
        };
        AhoCorasickMatcher::new(metadata, kind)
            .map(Any::AhoCorasick)
            .map_err(|e| e.to_string())
    }

    fn match_into(&self, text: &str, scratch: &mut MatchScratch, matched: &mut Vec<u32>) {
        match self {
            Any::Trie(m) => m.match_into(text, scratch, matched),
            Any::AhoCorasick(m) => m.match_into(text, scratch, matched),
        }
    }

    fn memory(&self) -> Option<usize> {
        match self {
            Any::Trie(_) => None,
            Any::AhoCorasick(m) => Some(m.memory_usage()),
        }
    }
}

/// Matched ids of a run of captions, flat: caption i's ids are `ids[offsets[i]..offsets[i + 1]]`.
struct Matches {
    ids: Vec<u32>,
    offsets: Vec<usize>,
}

impl Matches {
    fn of(&self, i: usize) -> &[u32] {
        &self.ids[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// Timing of one step: wall seconds and CPU seconds over all threads.
#[derive(Default, Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: f64,
}

/// Run `work(chunk_index, chunk)` on one thread per chunk; results in chunk order plus timing.
fn on_threads<T: Send, R: Send>(chunks: Vec<T>, work: impl Fn(usize, T) -> R + Sync) -> (Vec<R>, Timing) {
    let started = Instant::now();
    let work = &work;
    let results: Vec<(R, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| {
                scope.spawn(move || {
                    let cpu0 = thread_cpu_ns();
                    let out = work(i, chunk);
                    (out, thread_cpu_ns().saturating_sub(cpu0))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = results.iter().map(|(_, ns)| *ns as f64 * 1e-9).sum();
    (results.into_iter().map(|(r, _)| r).collect(), Timing { wall, cpu })
}

struct Args {
    entries: PathBuf,
    captions: PathBuf,
    t: u64,
    threads: Vec<usize>,
    matchers: Vec<String>,
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut entries = None;
    let mut captions = None;
    let mut t = 20_000;
    let mut threads = vec![1, 2];
    let mut matchers = vec!["trie".to_string()];
    let mut repeat = 3;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--entries" => entries = Some(PathBuf::from(value()?)),
            "--captions" => captions = Some(PathBuf::from(value()?)),
            "--t" => t = value()?.parse().map_err(|e| format!("--t: {e}"))?,
            "--threads" => {
                threads = value()?
                    .split_whitespace()
                    .map(|n| n.parse().map_err(|e| format!("--threads {n:?}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--repeat" => repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--matchers" => matchers = value()?.split_whitespace().map(String::from).collect(),
            other => return Err(format!("unknown argument {other:?} (see the example's doc comment)")),
        }
    }
    Ok(Args {
        entries: entries.ok_or("--entries is required")?,
        captions: captions.ok_or("--captions is required")?,
        t,
        threads,
        matchers,
        repeat: repeat.max(1),
    })
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let started = Instant::now();
    let mut metadata = Metadata::default();
    metadata.extend_from_file(&args.entries).map_err(|e| e.to_string())?;
    let metadata_s = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&args.captions).map_err(|e| format!("{}: {e}", args.captions.display()))?;
    // Split at '\n' only: a caption may hold a '\r', which `lines()` would strip.
    let captions: Vec<&str> = text.strip_suffix('\n').unwrap_or(&text).split('\n').collect();
    // The sample keys `ferroclip curate` sees for these captions (the bench's shards name them so).
    let keys: Vec<String> = (0..captions.len()).map(|i| format!("{i:09}")).collect();
    let entries = metadata.len();
    for name in &args.matchers {
        let cpu0 = thread_cpu_ns();
        let build_started = Instant::now();
        let matcher = Any::build(name, &metadata)?;
        let build = Timing {
            wall: build_started.elapsed().as_secs_f64(),
            cpu: thread_cpu_ns().saturating_sub(cpu0) as f64 * 1e-9,
        };
        for &threads in &args.threads {
            let threads = threads.max(1);
            let mut best: Option<Measured> = None;
            for _ in 0..args.repeat {
                let m = measure(&matcher, &captions, &keys, entries, args.t, threads);
                best = Some(match best {
                    None => m,
                    Some(b) => b.min(&m),
                });
            }
            let Some(m) = best else { continue };
            let line = serde_json::json!({
                "matcher": name,
                "threads": threads,
                "repeat": args.repeat,
                "captions": captions.len(),
                "entries": entries,
                "metadata_s": metadata_s,
                "build_s": build.wall,
                "build_cpu_s": build.cpu,
                "automaton_bytes": matcher.memory(),
                "match_s": m.matching.wall,
                "match_cpu_s": m.matching.cpu,
                "count_s": m.counting.wall,
                "count_cpu_s": m.counting.cpu,
                "balance_s": m.balancing.wall,
                "balance_cpu_s": m.balancing.cpu,
                "total_s": m.matching.wall + m.counting.wall + m.balancing.wall,
                "total_cpu_s": m.matching.cpu + m.counting.cpu + m.balancing.cpu,
                "texts_matched": m.texts_matched,
                "entries_matched": m.entries_matched,
                "entries_over_t": m.entries_over_t,
                "kept": m.kept,
            });
            println!("{line}");
        }
    }
    Ok(())
}

/// One measurement of the three steps, with their outcome.
struct Measured {
    matching: Timing,
    counting: Timing,
    balancing: Timing,
    texts_matched: usize,
    entries_matched: usize,
    entries_over_t: usize,
    kept: u64,
}

impl Measured {
    /// Step by step, the faster of two measurements (wall and CPU each); same outcome.
    fn min(&self, other: &Measured) -> Measured {
        let min = |a: Timing, b: Timing| Timing {
            wall: a.wall.min(b.wall),
            cpu: a.cpu.min(b.cpu),
        };
        Measured {
            matching: min(self.matching, other.matching),
            counting: min(self.counting, other.counting),
            balancing: min(self.balancing, other.balancing),
            ..*other
        }
    }
}

fn measure(matcher: &Any, captions: &[&str], keys: &[String], entries: usize, t: u64, threads: usize) -> Measured {
    let per = captions.len().div_ceil(threads).max(1);
    let ranges: Vec<(usize, usize)> = (0..captions.len())
        .step_by(per)
        .map(|s| (s, (s + per).min(captions.len())))
        .collect();

    let (matches, match_t) = on_threads(ranges.clone(), |_, (start, end)| {
        let mut scratch = MatchScratch::default();
        let mut one = Vec::new();
        let mut all = Matches {
            ids: Vec::new(),
            offsets: Vec::with_capacity(end - start + 1),
        };
        all.offsets.push(0);
        for text in &captions[start..end] {
            matcher.match_into(text, &mut scratch, &mut one);
            all.ids.extend_from_slice(&one);
            all.offsets.push(all.ids.len());
        }
        all
    });

    let (parts, count_t) = on_threads(matches.iter().collect(), |_, m: &Matches| {
        let mut counts = vec![0u64; entries];
        for &e in &m.ids {
            counts[e as usize] += 1;
        }
        counts
    });
    let sum_started = Instant::now();
    let mut counts = vec![0u64; entries];
    for part in &parts {
        for (c, p) in counts.iter_mut().zip(part) {
            *c += p;
        }
    }
    let sum_s = sum_started.elapsed().as_secs_f64();
    let count_t = Timing {
        wall: count_t.wall + sum_s,
        cpu: count_t.cpu + sum_s,
    };

    let prob_started = Instant::now();
    let keep_prob: Vec<f64> = counts.iter().map(|&c| keep_probability(c, t)).collect();
    let prob_s = prob_started.elapsed().as_secs_f64();
    let chunks: Vec<(usize, &Matches)> = ranges.iter().map(|r| r.0).zip(matches.iter()).collect();
    let (kept, balance_t) = on_threads(chunks, |_, (start, m)| {
        let mut kept = 0u64;
        for i in 0..m.offsets.len() - 1 {
            let ids = m.of(i);
            if !ids.is_empty() && balanced_keep(ids, &keep_prob, &SampleRng::new(0, &keys[start + i])) {
                kept += 1;
            }
        }
        kept
    });
    let balance_t = Timing {
        wall: balance_t.wall + prob_s,
        cpu: balance_t.cpu + prob_s,
    };

    let texts_matched: usize = matches
        .iter()
        .map(|m| m.offsets.windows(2).filter(|w| w[1] > w[0]).count())
        .sum();
    Measured {
        matching: match_t,
        counting: count_t,
        balancing: balance_t,
        texts_matched,
        entries_matched: counts.iter().filter(|&&c| c > 0).count(),
        entries_over_t: counts.iter().filter(|&&c| c > t).count(),
        kept: kept.iter().sum::<u64>(),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metaclip_throughput: {e}");
            ExitCode::FAILURE
        }
    }
}
