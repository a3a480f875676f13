//! Runs the sweep's runs as processes, K at a time.
//!
//! A run is a list of [`Step`]s (train, then eval). A step is done when its marker
//! `<run>/.sweep/<step>.done` (written only after the step exited 0) and all its
//! output files exist; done steps are skipped, so a re-run of a sweep recomputes
//! nothing that finished. A failed step is retried (with its resume arguments when
//! its resume marker exists, e.g. `--resume latest` once `checkpoints/` exists) up
//! to `max_retries` times. Each step's output is appended to `<run>/logs/sweep-<step>.log`.
//! A job may [`Need`] a file another job writes (a cooldown branch needs its trunk's
//! checkpoint): it waits in the queue until the file exists, and fails without running
//! if the other job ends without writing it.
//! On SIGINT/SIGTERM (with [`crate::install_signal_handlers`]) or a [`StopHandle`],
//! running steps get SIGTERM (then SIGKILL after a grace period) and the sweep
//! returns [`SweepError::Interrupted`]; they resume on the next run.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::SweepError;
use crate::process::isolate;
use crate::signals::received_signal;
use crate::StopHandle;

/// One process of a run.
#[derive(Debug, Clone)]
pub struct Step {
    /// Short name (`train`, `eval`): the marker and log file names.
    pub label: String,
    /// Program and arguments.
    pub argv: Vec<OsString>,
    /// Appended to `argv` when `resume_when` exists (a retry or re-run after an interruption).
    pub resume_args: Vec<OsString>,
    /// Appended to `argv` when `resume_when` does not exist: how a first attempt starts
    /// (a cooldown branch: `--resume <trunk checkpoint>`).
    pub fresh_args: Vec<OsString>,
    /// The path whose existence means there is something to resume from.
    pub resume_when: Option<PathBuf>,
    /// Files the step must have produced for it to count as done.
    pub outputs: Vec<PathBuf>,
}

/// One run: its folder and steps, in order.
#[derive(Debug, Clone)]
pub struct Job {
    /// The run name (for messages).
    pub name: String,
    /// The run folder (markers and logs go here).
    pub dir: PathBuf,
    /// Steps, run one after the other.
    pub steps: Vec<Step>,
    /// Files of other jobs that must exist before this job starts.
    pub needs: Vec<Need>,
}

/// A file that another job of the same sweep writes.
#[derive(Debug, Clone)]
pub struct Need {
    /// The job that writes it.
    pub job: String,
    /// The file or folder.
    pub path: PathBuf,
}

/// The jobs not yet started, and the names of those waiting or running: a job not among
/// them (ended, or not part of this sweep run) writes nothing more.
struct Queue {
    waiting: VecDeque<Job>,
    live: HashSet<String>,
}

/// What a worker takes from the queue.
enum Next {
    /// A job whose needs are met.
    Run(Job),
    /// A job that cannot run: what it needs was not written by a job that ended.
    Doomed(Job, String),
    /// Jobs are waiting for running ones.
    Wait,
    /// Nothing left.
    Empty,
}

impl Queue {
    fn next(&mut self) -> Next {
        let ready = |job: &Job| job.needs.iter().all(|n| n.path.exists());
        let missing = |job: &Job| {
            job.needs
                .iter()
                .find(|n| !n.path.exists() && !self.live.contains(&n.job))
                .map(|n| format!("needs {} from {}, which ended without it", n.path.display(), n.job))
        };
        if let Some(i) = self.waiting.iter().position(ready) {
            return self.waiting.remove(i).map_or(Next::Empty, Next::Run);
        }
        if let Some((i, why)) = self
            .waiting
            .iter()
            .enumerate()
            .find_map(|(i, j)| missing(j).map(|w| (i, w)))
        {
            return self.waiting.remove(i).map_or(Next::Empty, |job| Next::Doomed(job, why));
        }
        match self.waiting.is_empty() {
            true => Next::Empty,
            false => Next::Wait,
        }
    }
}

impl Job {
    /// Whether every step is done.
    pub fn is_done(&self) -> bool {
        self.steps.iter().all(|s| step_done(&self.dir, s))
    }
}

/// How to run the jobs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Runs at the same time.
    pub parallel: usize,
    /// Extra attempts per run after a failure.
    pub max_retries: u32,
    /// Time a stopped step gets between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            parallel: 1,
            max_retries: 1,
            grace: Duration::from_secs(10),
        }
    }
}

/// What happened to each run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    /// Runs found done and not started.
    pub skipped: Vec<String>,
    /// Runs that finished now.
    pub finished: Vec<String>,
}

fn marker(dir: &Path, step: &Step) -> PathBuf {
    dir.join(".sweep").join(format!("{}.done", step.label))
}

fn step_done(dir: &Path, step: &Step) -> bool {
    marker(dir, step).exists() && step.outputs.iter().all(|p| p.exists())
}

/// Shared progress counters for the progress bar's message.
#[derive(Default)]
struct Counts {
    done: usize,
    running: usize,
    failed: usize,
    failures: Vec<String>,
    finished: Vec<String>,
}

/// Runs `jobs`, `opts.parallel` at a time; done ones are skipped. Errors when a
/// run still fails after its retries (the others are finished first) or when stopped.
pub fn run_jobs(jobs: Vec<Job>, opts: &RunOptions, stop: &StopHandle) -> Result<RunReport, SweepError> {
    let (done, todo): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(Job::is_done);
    let skipped: Vec<String> = done.into_iter().map(|j| j.name).collect();
    let progress = ProgressBar::with_draw_target(Some(todo.len() as u64), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("[sweep] {bar:30} {pos}/{len} runs  {msg}  elapsed {elapsed}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let say = |line: String| progress.suspend(|| eprintln!("[sweep] {line}"));
    say(format!(
        "{} run(s) to do, {} already finished, {} at a time",
        todo.len(),
        skipped.len(),
        opts.parallel.max(1)
    ));
    let queue = Arc::new(Mutex::new(Queue {
        live: todo.iter().map(|j| j.name.clone()).collect(),
        waiting: todo.into_iter().collect(),
    }));
    let counts = Arc::new(Mutex::new(Counts::default()));
    let interrupted: Mutex<Option<i32>> = Mutex::new(None);
    let stop_requested = || stop.is_stopped() || received_signal().is_some();

    let update =
        |c: &Counts| progress.set_message(format!("done {} running {} failed {}", c.done, c.running, c.failed));
    std::thread::scope(|scope| {
        for _ in 0..opts.parallel.max(1) {
            scope.spawn(|| loop {
                if stop_requested() {
                    return;
                }
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let job = match next {
                    Next::Run(job) => job,
                    Next::Empty => return,
                    Next::Wait => {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    Next::Doomed(job, why) => {
                        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                        c.failed += 1;
                        say(format!("FAILED {}: {why}", job.name));
                        c.failures.push(format!("{}: {why}", job.name));
                        queue.lock().unwrap_or_else(|p| p.into_inner()).live.remove(&job.name);
                        progress.inc(1);
                        update(&c);
                        continue;
                    }
                };
                {
                    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                    c.running += 1;
                    update(&c);
                }
                say(format!("start {}", job.name));
                let result = run_job(&job, opts, &stop_requested);
                let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                c.running -= 1;
                match result {
                    JobResult::Finished(secs) => {
                        c.done += 1;
                        c.finished.push(job.name.clone());
                        say(format!("done  {} in {secs:.0}s", job.name));
                    }
                    JobResult::Failed(why) => {
                        c.failed += 1;
                        say(format!("FAILED {}: {why}", job.name));
                        c.failures.push(format!("{}: {why}", job.name));
                    }
                    JobResult::Stopped(signal) => {
                        *interrupted.lock().unwrap_or_else(|p| p.into_inner()) = Some(signal);
                        say(format!("stopped {}", job.name));
                    }
                }
                queue.lock().unwrap_or_else(|p| p.into_inner()).live.remove(&job.name);
                progress.inc(1);
                update(&c);
            });
        }
    });
    progress.finish_and_clear();
    let counts = match Arc::try_unwrap(counts) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(shared) => std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner())),
    };
    let stopped = interrupted.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(signal) = stopped.or_else(|| stop_requested().then(|| received_signal().unwrap_or(libc::SIGTERM))) {
        return Err(SweepError::Interrupted { signal });
    }
    if !counts.failures.is_empty() {
        return Err(SweepError::RunsFailed {
            failed: counts.failures,
        });
    }
    Ok(RunReport {
        skipped,
        finished: counts.finished,
    })
}

enum JobResult {
    Finished(f64),
    Failed(String),
    Stopped(i32),
}

enum StepResult {
    Ok,
    Failed(String),
    Stopped(i32),
}

fn run_job(job: &Job, opts: &RunOptions, stop_requested: &dyn Fn() -> bool) -> JobResult {
    let start = Instant::now();
    let mut attempts_left = opts.max_retries;
    for step in &job.steps {
        if step_done(&job.dir, step) {
            continue;
        }
        loop {
            match run_step(job, step, opts.grace, stop_requested) {
                StepResult::Ok => break,
                StepResult::Stopped(signal) => return JobResult::Stopped(signal),
                StepResult::Failed(why) if attempts_left == 0 => return JobResult::Failed(why),
                StepResult::Failed(_) => attempts_left -= 1,
            }
        }
    }
    JobResult::Finished(start.elapsed().as_secs_f64())
}

fn run_step(job: &Job, step: &Step, grace: Duration, stop_requested: &dyn Fn() -> bool) -> StepResult {
    let log_path = job.dir.join("logs").join(format!("sweep-{}.log", step.label));
    let fail = |what: String| StepResult::Failed(format!("{} step: {what} (log: {})", step.label, log_path.display()));
    let Some((program, args)) = step.argv.split_first() else {
        return fail("empty command".into());
    };
    let mut argv: Vec<OsString> = args.to_vec();
    if step.resume_when.as_ref().is_some_and(|p| p.exists()) {
        argv.extend(step.resume_args.iter().cloned());
    } else {
        argv.extend(step.fresh_args.iter().cloned());
    }
    let io = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
    if let Err(e) =
        std::fs::create_dir_all(job.dir.join("logs")).and_then(|_| std::fs::create_dir_all(job.dir.join(".sweep")))
    {
        return fail(io("creating folders in", &job.dir, e));
    }
    let mut log = match OpenOptions::new().create(true).append(true).open(&log_path) {
        Ok(f) => f,
        Err(e) => return fail(io("opening", &log_path, e)),
    };
    let shown: Vec<String> = std::iter::once(program)
        .chain(&argv)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let _ = writeln!(log, "=== sweep: {}", shown.join(" "));
    let (stdout, stderr) = match (log.try_clone(), log.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(io("duplicating", &log_path, e)),
    };
    let mut cmd = Command::new(program);
    cmd.args(&argv).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    isolate(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {}: {e}", program.to_string_lossy())),
    };
    let pid = child.id() as i32;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => return fail(format!("exited with {status}")),
            Ok(None) => {}
            Err(e) => return fail(format!("waiting for the process: {e}")),
        }
        if stop_requested() {
            // SAFETY: plain syscalls on the process group we started (isolate).
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            let _ = writeln!(log, "=== sweep: stopped");
            return StepResult::Stopped(received_signal().unwrap_or(libc::SIGTERM));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(missing) = step.outputs.iter().find(|p| !p.exists()) {
        return fail(format!("exited 0 but did not write {}", missing.display()));
    }
    let done = marker(&job.dir, step);
    if let Err(e) = std::fs::write(&done, b"") {
        return fail(io("writing", &done, e));
    }
    StepResult::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(label: &str, script: &str, outputs: Vec<PathBuf>) -> Step {
        Step {
            label: label.into(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            resume_args: vec!["resumed".into()],
            fresh_args: Vec::new(),
            resume_when: None,
            outputs,
        }
    }

    fn opts(parallel: usize, max_retries: u32) -> RunOptions {
        RunOptions {
            parallel,
            max_retries,
            grace: Duration::from_secs(2),
        }
    }

    #[test]
    fn finished_runs_are_skipped_and_failures_retried() {
        let root = tempfile::tempdir().unwrap();
        let dir = |n: &str| root.path().join(n);
        let counter = root.path().join("count");
        // `a` writes its output; `b` fails on its first attempt only.
        let job_a = Job {
            name: "a".into(),
            dir: dir("a"),
            needs: Vec::new(),
            steps: vec![sh(
                "train",
                &format!(
                    "echo x >> {0}; echo ok > {1}",
                    counter.display(),
                    dir("a").join("out").display()
                ),
                vec![dir("a").join("out")],
            )],
        };
        let flag = dir("b").join("tried");
        let job_b = Job {
            name: "b".into(),
            dir: dir("b"),
            needs: Vec::new(),
            steps: vec![sh(
                "train",
                &format!(
                    "if [ -e {0} ]; then echo ok; else touch {0}; exit 3; fi",
                    flag.display()
                ),
                vec![],
            )],
        };
        let report = run_jobs(vec![job_a.clone(), job_b.clone()], &opts(2, 1), &StopHandle::new()).unwrap();
        assert_eq!(report.skipped.len(), 0);
        assert_eq!(report.finished.len(), 2);
        assert!(job_a.is_done() && job_b.is_done());
        let log = std::fs::read_to_string(dir("b").join("logs/sweep-train.log")).unwrap();
        assert_eq!(log.matches("=== sweep:").count(), 2, "{log}");

        let report = run_jobs(vec![job_a.clone(), job_b], &opts(1, 0), &StopHandle::new()).unwrap();
        assert_eq!(report.skipped, ["a", "b"]);
        assert_eq!(std::fs::read_to_string(&counter).unwrap().lines().count(), 1);
    }

    #[test]
    fn a_run_that_keeps_failing_is_reported_with_its_log() {
        let root = tempfile::tempdir().unwrap();
        let job = Job {
            name: "bad".into(),
            dir: root.path().join("bad"),
            needs: Vec::new(),
            steps: vec![sh("eval", "echo nope >&2; exit 7", vec![])],
        };
        let err = run_jobs(vec![job], &opts(1, 2), &StopHandle::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad") && err.contains("sweep-eval.log"), "{err}");
        let log = std::fs::read_to_string(root.path().join("bad/logs/sweep-eval.log")).unwrap();
        assert_eq!(log.lines().filter(|l| *l == "nope").count(), 3, "{log}");
    }

    #[test]
    fn resume_args_only_when_there_is_something_to_resume() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("r");
        let out = dir.join("args");
        let mut step = sh("train", &format!("echo \"$0\" > {}", out.display()), vec![]);
        step.resume_when = Some(dir.join("checkpoints"));
        step.fresh_args = vec!["fresh".into()];
        let job = Job {
            name: "r".into(),
            dir: dir.clone(),
            steps: vec![step],
            needs: Vec::new(),
        };
        run_jobs(vec![job.clone()], &opts(1, 0), &StopHandle::new()).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "fresh");
        std::fs::remove_file(dir.join(".sweep/train.done")).unwrap();
        std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
        run_jobs(vec![job], &opts(1, 0), &StopHandle::new()).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "resumed");
    }

    #[test]
    fn a_stop_request_stops_the_running_step_and_leaves_it_undone() {
        let root = tempfile::tempdir().unwrap();
        let job = Job {
            name: "slow".into(),
            dir: root.path().join("slow"),
            needs: Vec::new(),
            steps: vec![sh("train", "sleep 30", vec![])],
        };
        let stop = StopHandle::new();
        let trigger = stop.clone();
        let timer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            trigger.stop();
        });
        let start = Instant::now();
        let err = run_jobs(vec![job.clone()], &opts(1, 3), &stop).unwrap_err();
        timer.join().unwrap();
        assert!(matches!(err, SweepError::Interrupted { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(!job.is_done());
    }

    /// A job that needs `path` from `trunk`, and records whether the path existed when it ran.
    fn branch_job(root: &Path, name: &str, trunk: &str, path: &Path) -> Job {
        let dir = root.join(name);
        let seen = dir.join("saw-trunk");
        Job {
            name: name.into(),
            steps: vec![sh(
                "train",
                &format!("test -e {} && touch {}", path.display(), seen.display()),
                vec![seen],
            )],
            dir,
            needs: vec![Need {
                job: trunk.into(),
                path: path.to_owned(),
            }],
        }
    }

    #[test]
    fn a_job_waits_for_what_it_needs_even_when_listed_first() {
        let root = tempfile::tempdir().unwrap();
        let checkpoint = root.path().join("trunk/step_3");
        let trunk = Job {
            name: "trunk".into(),
            dir: root.path().join("trunk"),
            steps: vec![sh(
                "train",
                &format!("sleep 0.5; mkdir -p {}", checkpoint.display()),
                vec![],
            )],
            needs: Vec::new(),
        };
        let branch = branch_job(root.path(), "branch", "trunk", &checkpoint);
        // Two workers: the branch is first in line but must not start before the trunk's file.
        let report = run_jobs(vec![branch.clone(), trunk], &opts(2, 0), &StopHandle::new()).unwrap();
        assert_eq!(report.finished, ["trunk", "branch"]);
        assert!(branch.is_done());
    }

    #[test]
    fn a_job_whose_need_was_never_written_fails_without_running() {
        let root = tempfile::tempdir().unwrap();
        let checkpoint = root.path().join("trunk/step_3");
        let trunk = Job {
            name: "trunk".into(),
            dir: root.path().join("trunk"),
            steps: vec![sh("train", "exit 4", vec![])],
            needs: Vec::new(),
        };
        let branch = branch_job(root.path(), "branch", "trunk", &checkpoint);
        let err = run_jobs(vec![trunk, branch], &opts(2, 0), &StopHandle::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 run(s) failed"), "{err}");
        assert!(
            err.contains("branch: needs") && err.contains("which ended without it"),
            "{err}"
        );
        assert!(!root.path().join("branch/logs").exists(), "the branch never ran");
        // Alone (a SLURM array task), a job whose need's writer is not running fails at once.
        let alone = branch_job(root.path(), "alone", "trunk", &checkpoint);
        let err = run_jobs(vec![alone], &opts(1, 0), &StopHandle::new()).unwrap_err();
        assert!(err.to_string().contains("alone: needs"), "{err}");
    }
}
