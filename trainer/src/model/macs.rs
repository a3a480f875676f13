//! Forward multiply-accumulates (MACs) per sample, per tower: the compute measure of
//! scaling-law sweeps (docs/architecture.md §8: C = MACs per sample × samples seen).
//!
//! Convention (the one of OpenCLIP's scaling-law study and of torch's
//! `FlopCounterMode` halved): one forward pass over one image and one text of
//! `context_length` tokens; every matmul, linear layer and the patch convolution,
//! plus attention's two products Q·Kᵀ and A·V counted in full (also under the text
//! tower's causal mask). LayerNorm, GELU, softmax, embedding lookups and additions
//! are not counted. Training costs about 3× this (forward + backward); that factor
//! is left out, as the study did. [`recompute_macs`] counts the extra forward work of
//! activation checkpointing apart (throughput and MFU, `crate::train::throughput`).
//!
//! ```
//! let nano = trainer::ModelConfig::preset("nano")?;
//! let macs = trainer::model::macs::forward_macs(&nano);
//! assert_eq!(macs.total(), macs.image + macs.text);
//! # Ok::<(), trainer::ConfigError>(())
//! ```

use super::config::ModelConfig;

/// Forward MACs of one sample, split by tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacCount {
    /// The image tower: patch conv, transformer, projection.
    pub image: u64,
    /// The text tower over `context_length` tokens: transformer, projection.
    pub text: u64,
}

impl MacCount {
    /// Both towers.
    pub fn total(&self) -> u64 {
        self.image + self.text
    }
}

/// MACs of one pre-LN residual block over `tokens` tokens of width `width` with an
/// MLP of hidden width `mlp_width`.
fn block_macs(tokens: u64, width: u64, mlp_width: u64) -> u64 {
    let qkv = tokens * width * 3 * width; // fused in_proj: (L, D) x (D, 3D)
    let attention = 2 * tokens * tokens * width; // Q·Kᵀ and A·V, summed over heads
    let out_proj = tokens * width * width;
    let mlp = 2 * tokens * width * mlp_width; // c_fc and c_proj
    qkv + attention + out_proj + mlp
}

/// Forward MACs per sample of the CLIP model `cfg` describes (a validated config:
/// every dimension positive).
pub fn forward_macs(cfg: &ModelConfig) -> MacCount {
    let v = &cfg.vision;
    let t = &cfg.text;
    let dim = |x: i64| x.max(0) as u64;
    let embed = dim(cfg.embed_dim);

    let patches = dim(v.grid_size() * v.grid_size());
    let patch_conv = patches * dim(v.width) * 3 * dim(v.patch_size * v.patch_size);
    let image = patch_conv
        + dim(v.layers) * block_macs(dim(v.num_tokens()), dim(v.width), dim(v.mlp_width()))
        + dim(v.width) * embed; // proj of the class token

    let text =
        dim(t.layers) * block_macs(dim(t.context_length), dim(t.width), dim(t.mlp_width())) + dim(t.width) * embed; // text_projection of the end-of-text token
    MacCount { image, text }
}

/// The MACs per sample that activation checkpointing (`model.grad_checkpointing`,
/// [`super::recompute`]) adds to a training step: in each checkpointed tower the backward
/// pass runs the stem and every block but the last forward again (the last block and the
/// head keep their graph). Counted apart from [`forward_macs`], the model's own work.
pub fn recompute_macs(cfg: &ModelConfig) -> MacCount {
    let v = &cfg.vision;
    let t = &cfg.text;
    let dim = |x: i64| x.max(0) as u64;
    let image = if cfg.vision_checkpointing() {
        let patches = dim(v.grid_size() * v.grid_size());
        let patch_conv = patches * dim(v.width) * 3 * dim(v.patch_size * v.patch_size);
        patch_conv + dim(v.layers - 1) * block_macs(dim(v.num_tokens()), dim(v.width), dim(v.mlp_width()))
    } else {
        0
    };
    // The text stem is an embedding lookup: no MACs.
    let text = if cfg.text_checkpointing() {
        dim(t.layers - 1) * block_macs(dim(t.context_length), dim(t.width), dim(t.mlp_width()))
    } else {
        0
    };
    MacCount { image, text }
}

impl ModelConfig {
    /// Multiply-accumulates of one forward pass over one image and one full-length
    /// text (`context_length` tokens): matmuls and the patch conv only, the count
    /// scaling-law fits use (C = MACs per sample x samples seen).
    pub fn macs_per_sample(&self) -> i64 {
        forward_macs(self).total() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Clip;
    use tch::nn::VarStore;
    use tch::Device;

    /// Independent count: walk the variables of a real `Clip` and charge each
    /// weight matrix for the tokens it is applied to, plus attention for every
    /// block found (tokens² × width for each of the two products).
    fn count_from_variables(cfg: &ModelConfig) -> MacCount {
        let vs = VarStore::new(Device::Cpu);
        let _clip = Clip::new(&vs.root(), cfg);
        let image_tokens = cfg.vision.num_tokens() as u64;
        let patches = image_tokens - 1;
        let text_tokens = cfg.text.context_length as u64;
        let mut count = MacCount { image: 0, text: 0 };
        for (name, var) in vs.variables() {
            let shape: Vec<u64> = var.size().iter().map(|&d| d as u64).collect();
            let numel: u64 = shape.iter().product();
            let is_image = name.starts_with("visual.");
            let tokens = if is_image { image_tokens } else { text_tokens };
            let macs = if name.ends_with("conv1.weight") {
                patches * numel // each patch meets every weight once
            } else if name == "visual.proj" || name == "text_projection" {
                numel // one pooled token
            } else if name.ends_with("in_proj_weight") {
                let width = shape[1];
                tokens * numel + 2 * tokens * tokens * width
            } else if shape.len() == 2 && name.ends_with(".weight") && !name.contains("token_embedding") {
                tokens * numel // out_proj, c_fc, c_proj
            } else {
                0 // LayerNorms, biases, embeddings, logit_scale
            };
            if is_image {
                count.image += macs;
            } else {
                count.text += macs;
            }
        }
        count
    }

    #[test]
    fn formula_matches_a_count_over_the_models_variables() {
        for preset in ["nano", "tiny"] {
            let cfg = ModelConfig::preset(preset).unwrap();
            assert_eq!(forward_macs(&cfg), count_from_variables(&cfg), "{preset}");
        }
        // An MLP ratio that truncates, and unequal towers.
        let mut odd = ModelConfig::preset("nano").unwrap();
        odd.vision.mlp_ratio = 2.7;
        odd.text.layers = 3;
        odd.validate().unwrap();
        assert_eq!(forward_macs(&odd), count_from_variables(&odd));
    }

    #[test]
    fn nano_by_hand() {
        // Image: 4×4 patches of 8×8×3 into 64 channels, 17 tokens, 2 blocks, MLP 256.
        let conv = 16 * 64 * 192;
        let vision_block = 17 * 64 * 192 + 2 * 17 * 17 * 64 + 17 * 64 * 64 + 2 * 17 * 64 * 256;
        let image = conv + 2 * vision_block + 64 * 32;
        // Text: 32 tokens, width 64, 2 blocks, MLP 256.
        let text_block = 32 * 64 * 192 + 2 * 32 * 32 * 64 + 32 * 64 * 64 + 2 * 32 * 64 * 256;
        let text = 2 * text_block + 64 * 32;
        let macs = forward_macs(&ModelConfig::preset("nano").unwrap());
        assert_eq!(macs, MacCount { image, text });
    }

    #[test]
    fn recompute_is_the_stem_and_all_blocks_but_the_last_of_checkpointed_towers() {
        let mut cfg = ModelConfig::preset("nano").unwrap();
        assert_eq!(recompute_macs(&cfg), MacCount { image: 0, text: 0 });
        // nano: 2 blocks per tower, so one block (and the image stem) is run again.
        let conv = 16 * 64 * 192;
        let vision_block = 17 * 64 * 192 + 2 * 17 * 17 * 64 + 17 * 64 * 64 + 2 * 17 * 64 * 256;
        let text_block = 32 * 64 * 192 + 2 * 32 * 32 * 64 + 32 * 64 * 64 + 2 * 32 * 64 * 256;
        cfg.grad_checkpointing = true;
        let both = MacCount {
            image: conv + vision_block,
            text: text_block,
        };
        assert_eq!(recompute_macs(&cfg), both);
        cfg.text.grad_checkpointing = Some(false);
        assert_eq!(
            recompute_macs(&cfg),
            MacCount {
                image: both.image,
                text: 0
            }
        );
    }

    #[test]
    fn matches_torch_flop_counter_on_open_clip() {
        // scripts/reference/make_macs_fixture.py: FlopCounterMode over open_clip's CLIP
        // (2 FLOPs per MAC) for presets and the demo sweep's models.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("tests/fixtures/macs_reference.json")).unwrap();
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        let models = reference.as_object().unwrap();
        assert!(models.len() >= 5);
        for (name, flops) in models {
            let cfg = match ModelConfig::preset(name) {
                Ok(cfg) => cfg,
                Err(_) => ModelConfig::from_toml_file(root.join(format!("../configs/models/{name}.toml"))).unwrap(),
            };
            let macs = forward_macs(&cfg);
            assert_eq!(2 * macs.image, flops["image_flops"].as_u64().unwrap(), "{name} image");
            assert_eq!(2 * macs.text, flops["text_flops"].as_u64().unwrap(), "{name} text");
        }
    }
}
