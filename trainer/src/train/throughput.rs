//! Throughput in FLOP/s and model FLOPs utilisation (MFU), logged every window.
//!
//! Model FLOPs per sample = 2 FLOPs per MAC × 3 (forward + backward ≈ 2 forwards) ×
//! [`forward_macs`] (the scaling-law count, matmuls and the patch conv). Work done again
//! is counted apart, as `recompute_tflops`: activation checkpointing's second forward of
//! the stem and all blocks but the last ([`recompute_macs`]), and GradCache's second
//! encoding of all micro-batches but the last ((K − 1)/K of a forward,
//! [`super::step`]). MFU divides the model FLOP/s by the peak of all workers; HFU (hardware
//! FLOPs utilisation) adds the recomputation. The peak is the user's
//! (`log.peak_tflops`, per worker) or, for bf16 runs on a known NVIDIA GPU, its dense
//! bf16 tensor-core peak; otherwise there is none and MFU is not logged.

use serde_json::{Map, Value};
use tch::Device;

use crate::model::macs::{forward_macs, recompute_macs};
use crate::model::ModelConfig;
use crate::precision::Precision;

/// Dense bf16 tensor-core peaks in TFLOP/s (NVIDIA's data sheets, without sparsity), by a
/// part of the name `nvidia-smi` reports; the first match wins, so variants come first.
const BF16_PEAKS: [(&str, f64); 6] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0), // SXM5 (NVIDIA H100 80GB HBM3)
    ("H200 NVL", 835.0),
    ("H200", 989.0), // SXM (NVIDIA H200), also GH200
    ("A100", 312.0), // SXM4 and PCIe, 40 and 80 GB
];

/// The dense bf16 peak of the GPU named `name`, if it is one of [`BF16_PEAKS`].
pub fn bf16_peak_tflops(name: &str) -> Option<f64> {
    BF16_PEAKS
        .iter()
        .find(|(part, _)| name.contains(part))
        .map(|&(_, peak)| peak)
}

/// The peak one worker's FLOP/s are measured against, and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    /// TFLOP/s of one worker.
    pub tflops: f64,
    /// `log.peak_tflops`, or the GPU's name.
    pub source: String,
}

impl Peak {
    /// The stated peak, else the one the device implies: a known GPU's bf16 peak when the
    /// run is bf16 on CUDA (an fp32 run's peak depends on TF32 settings: not guessed).
    pub fn resolve(stated: Option<f64>, device: Device, precision: Precision) -> Option<Peak> {
        if let Some(tflops) = stated {
            return Some(Peak {
                tflops,
                source: "log.peak_tflops".into(),
            });
        }
        if !matches!(device, Device::Cuda(_)) || precision != Precision::Bf16 {
            return None;
        }
        let name = gpu_name()?;
        bf16_peak_tflops(&name).map(|tflops| Peak {
            tflops,
            source: format!("{name}, dense bf16"),
        })
    }
}

/// The name of the GPUs, from `nvidia-smi` (tch does not expose it). With
/// `CUDA_VISIBLE_DEVICES` set, indices differ between CUDA and nvidia-smi, so a name is
/// given only when every GPU listed has the same one.
fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let first = names.first()?;
    names.iter().all(|n| n == first).then(|| first.to_string())
}

/// Says on the console what MFU is measured against, or why it is not logged.
pub fn log_peak(peak: Option<&Peak>) {
    match peak {
        Some(peak) => tracing::info!(
            "MFU against a peak of {} TFLOP/s per worker ({})",
            peak.tflops,
            peak.source
        ),
        None => tracing::info!("MFU not logged: no peak known for this device and precision (set log.peak_tflops)"),
    }
}

/// FLOPs per training sample, and the peak of the whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    /// Model FLOPs per sample (forward + backward).
    pub model_flops: f64,
    /// FLOPs per sample of forward work done again (checkpointing, GradCache).
    pub recompute_flops: f64,
    /// The peak TFLOP/s of all workers together, when known.
    pub peak_tflops: Option<f64>,
}

impl Throughput {
    /// For `model` trained with `accum_steps` micro-batches per step on `world_size`
    /// workers of peak `peak`.
    pub fn new(model: &ModelConfig, accum_steps: usize, world_size: usize, peak: Option<&Peak>) -> Self {
        let forward = 2.0 * forward_macs(model).total() as f64;
        let checkpointing = 2.0 * recompute_macs(model).total() as f64;
        let k = accum_steps.max(1) as f64;
        Self {
            model_flops: 3.0 * forward,
            recompute_flops: checkpointing + (k - 1.0) / k * forward,
            peak_tflops: peak.map(|p| p.tflops * world_size as f64),
        }
    }

    /// The metrics of a window that trained `samples_per_s`: `tflops` (model),
    /// `recompute_tflops`, and with a peak `mfu` and `hfu` (fractions of it).
    pub fn fields(&self, samples_per_s: f64) -> Map<String, Value> {
        let tflops = self.model_flops * samples_per_s / 1e12;
        let recompute = self.recompute_flops * samples_per_s / 1e12;
        let mut out = Map::new();
        out.insert("tflops".into(), tflops.into());
        out.insert("recompute_tflops".into(), recompute.into());
        if let Some(peak) = self.peak_tflops {
            out.insert("mfu".into(), (tflops / peak).into());
            out.insert("hfu".into(), ((tflops + recompute) / peak).into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_flops_are_six_per_mac_and_recompute_is_apart() {
        let mut cfg = ModelConfig::preset("nano").unwrap();
        let macs = forward_macs(&cfg).total() as f64;
        let plain = Throughput::new(&cfg, 1, 1, None);
        assert_eq!(plain.model_flops, 6.0 * macs);
        assert_eq!(plain.recompute_flops, 0.0);
        // GradCache over 4 micro-batches encodes 3 of them twice.
        assert_eq!(Throughput::new(&cfg, 4, 1, None).recompute_flops, 0.75 * 2.0 * macs);
        cfg.grad_checkpointing = true;
        let recompute = 2.0 * recompute_macs(&cfg).total() as f64;
        assert!(recompute > 0.0);
        let checkpointed = Throughput::new(&cfg, 1, 1, None);
        assert_eq!(
            checkpointed.model_flops, plain.model_flops,
            "the model's work is the same"
        );
        assert_eq!(checkpointed.recompute_flops, recompute);
    }

    #[test]
    fn mfu_only_with_a_peak_over_all_workers() {
        let cfg = ModelConfig::preset("nano").unwrap();
        let no_peak = Throughput::new(&cfg, 1, 2, None).fields(1000.0);
        assert!(no_peak.contains_key("tflops") && !no_peak.contains_key("mfu") && !no_peak.contains_key("hfu"));
        let peak = Peak {
            tflops: 0.5,
            source: "test".into(),
        };
        let t = Throughput::new(&cfg, 2, 2, Some(&peak));
        let fields = t.fields(1000.0);
        let tflops = t.model_flops * 1000.0 / 1e12;
        assert_eq!(fields["tflops"].as_f64().unwrap(), tflops);
        assert_eq!(fields["mfu"].as_f64().unwrap(), tflops / 1.0, "2 workers of 0.5");
        let recompute = fields["recompute_tflops"].as_f64().unwrap();
        assert!(recompute > 0.0);
        assert_eq!(fields["hfu"].as_f64().unwrap(), tflops + recompute);
    }

    #[test]
    fn peaks_come_from_the_config_or_a_known_bf16_gpu() {
        assert_eq!(bf16_peak_tflops("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(bf16_peak_tflops("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(bf16_peak_tflops("NVIDIA H200"), Some(989.0));
        assert_eq!(bf16_peak_tflops("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(bf16_peak_tflops("NVIDIA GeForce RTX 4090"), None);
        let stated = Peak::resolve(Some(2.5), Device::Cpu, Precision::Fp32).unwrap();
        assert_eq!(stated.tflops, 2.5);
        // On the CPU nothing is implied: no peak, no MFU.
        assert_eq!(Peak::resolve(None, Device::Cpu, Precision::Bf16), None);
    }
}
