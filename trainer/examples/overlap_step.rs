//! Times the train loop's own step (`TrainStep`) with and without `optim.overlap_reduce`, for
//! `scripts/bench/overlap`: the image tower's gradient all-reduce on a communication thread
//! while the text tower backpropagates, against the whole all-reduce after the backward pass.
//!
//! ```text
//! mpirun --allow-run-as-root -np 2 target/release/examples/overlap_step \
//!     --model vit-b-32 --batch 16 --threads 1 --warmup 1 --steps 4
//! ```
//!
//! The two modes alternate step by step (plain, overlapped, plain, …; the first mode flips
//! every step pair), each with its own AdamW over the same model, so slow drifts of a shared
//! machine hit both alike. Each rank trains on its own random batches. Rank 0 prints one JSON
//! line: per mode, the median step time, the median communication the step waited for
//! (`comm_s`), and for the overlapped mode the median communication hidden behind the text
//! tower's backward pass and the image tower's reduce time.

use std::time::Instant;

use tch::{nn, Device};
use trainer::dist::{self, Dist};
use trainer::loss::LossKind;
use trainer::model::{Clip, ModelConfig};
use trainer::optim::{AdamW, OptimConfig};
use trainer::precision::Precision;
use trainer::train::ddp::broadcast_parameters;
use trainer::train::step::{StepOutcome, StepSettings, TrainStep};

#[path = "bench_support/batches.rs"]
mod batches;
#[path = "bench_support/memory.rs"]
#[allow(dead_code)] // only its argument reading
mod memory;
use batches::RandomBatches;
use memory::arg;

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The timed steps of one mode.
#[derive(Default)]
struct Timings {
    step_s: Vec<f64>,
    comm_s: Vec<f64>,
    hidden_s: Vec<f64>,
    first_reduce_s: Vec<f64>,
    text_backward_s: Vec<f64>,
}

impl Timings {
    fn push(&mut self, seconds: f64, outcome: &StepOutcome) {
        self.step_s.push(seconds);
        self.comm_s.push(outcome.comm_s);
        if let Some(report) = outcome.overlap {
            self.hidden_s.push(report.hidden_s);
            self.first_reduce_s.push(report.first_reduce_s);
            self.text_backward_s.push(report.backward_s);
        }
    }

    fn json(mut self) -> serde_json::Value {
        serde_json::json!({
            "median_step_s": median(&mut self.step_s),
            "median_comm_s": median(&mut self.comm_s),
            "median_hidden_s": median(&mut self.hidden_s),
            "median_image_reduce_s": median(&mut self.first_reduce_s),
            "median_text_backward_s": median(&mut self.text_backward_s),
            "step_s": self.step_s,
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_name = arg(&args, "--model", "tiny");
    let batch: i64 = arg(&args, "--batch", "16").parse()?;
    let threads: i32 = arg(&args, "--threads", "1").parse()?;
    let warmup: usize = arg(&args, "--warmup", "1").parse()?;
    let steps: usize = arg(&args, "--steps", "4").parse()?;
    if steps == 0 || batch <= 0 {
        return Err("--steps and --batch must be at least 1".into());
    }
    tch::set_num_threads(threads);
    let dist = Dist::from_env()?;
    let coll = dist::connect(&dist)?;

    tch::manual_seed(0);
    let cfg = ModelConfig::load(&model_name)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Clip::new(&vs.root(), &cfg);
    broadcast_parameters(&vs, coll.as_ref())?;
    tch::manual_seed(1000 + dist.rank as i64);
    let mut batches = RandomBatches {
        rows: batch,
        image_size: cfg.vision.image_size,
        context: cfg.text.context_length,
        u8_levels: true,
    };
    let step_for = |overlap_reduce: bool| {
        let settings = StepSettings {
            loss: LossKind::Clip,
            loss_tile: 0,
            precision: Precision::Fp32,
            accum_steps: 1,
            overlap_reduce,
        };
        let optimizer = AdamW::new(vs.variables(), &OptimConfig::default());
        TrainStep::new(&model, optimizer.into(), settings, coll.as_ref(), Device::Cpu)
    };
    let mut modes = [
        (false, step_for(false), Timings::default()),
        (true, step_for(true), Timings::default()),
    ];

    coll.barrier()?;
    for pair in 0..warmup + steps {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let (_, step, timings) = &mut modes[index];
            let started = Instant::now();
            let outcome = step.run(&mut batches, 1e-5)?;
            let seconds = started.elapsed().as_secs_f64();
            if pair >= warmup {
                timings.push(seconds, &outcome);
            }
        }
    }
    if dist.rank == 0 {
        let [(_, _, plain), (_, _, overlapped)] = modes;
        println!(
            "{}",
            serde_json::json!({
                "model": model_name,
                "world_size": dist.world_size,
                "threads": threads,
                "batch_per_worker": batch,
                "steps": steps,
                "plain": plain.json(),
                "overlapped": overlapped.json(),
            })
        );
    }
    Ok(())
}
