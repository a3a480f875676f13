//! The ViT image tower (open_clip's `VisionTransformer` with its defaults:
//! learned positional embedding, class-token pooling, LayerNorm before the
//! transformer and before the projection).

use tch::nn::{self, Init, ModuleT};
use tch::Tensor;

use super::config::{ModelConfig, VisionConfig};
use super::recompute::Tower;
use super::transformer::{layer_norm, torch_default_uniform, BlockInit, Transformer};

/// The image tower; its variables live under `visual.`.
#[derive(Debug)]
pub struct VisionTransformer {
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: nn::LayerNorm,
    transformer: Transformer,
    ln_post: nn::LayerNorm,
    proj: Tensor,
    patch_size: i64,
}

impl VisionTransformer {
    /// Creates the tower's variables under `p` (the caller passes `root / "visual"`).
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let v: &VisionConfig = &cfg.vision;
        let scale = (v.width as f64).powf(-0.5);
        let fan_in = 3 * v.patch_size * v.patch_size;
        // Patchify: a conv with kernel = stride = patch, no bias. (width, 3, P, P)
        let conv1 = (&p / "conv1").var(
            "weight",
            &[v.width, 3, v.patch_size, v.patch_size],
            torch_default_uniform(fan_in),
        );
        let class_embedding = p.var(
            "class_embedding",
            &[v.width],
            Init::Randn {
                mean: 0.0,
                stdev: scale,
            },
        );
        let positional_embedding = p.var(
            "positional_embedding",
            &[v.num_tokens(), v.width],
            Init::Randn {
                mean: 0.0,
                stdev: scale,
            },
        );
        let ln_pre = layer_norm(&p / "ln_pre", v.width);
        let transformer = Transformer::new(
            &p / "transformer",
            v.width,
            v.layers,
            v.heads(),
            v.mlp_width(),
            false,
            &BlockInit::torch_default(v.width, v.mlp_width()),
        );
        let ln_post = layer_norm(&p / "ln_post", v.width);
        let proj = p.var(
            "proj",
            &[v.width, cfg.embed_dim],
            Init::Randn {
                mean: 0.0,
                stdev: scale,
            },
        );
        VisionTransformer {
            conv1,
            class_embedding,
            positional_embedding,
            ln_pre,
            transformer,
            ln_post,
            proj,
            patch_size: v.patch_size,
        }
    }
}

impl Tower for VisionTransformer {
    /// (B, 3, H, W) f32 images -> (B, G*G+1, D): patches, class token, positions, `ln_pre`.
    fn stem(&self, images: &Tensor) -> Tensor {
        let batch = images.size()[0];
        let patches = images.conv2d(
            &self.conv1,
            None::<Tensor>,
            [self.patch_size, self.patch_size],
            [0, 0],
            [1, 1],
            1,
        ); // (B, D, G, G)
        let width = patches.size()[1];
        let tokens = patches.flatten(2, 3).transpose(1, 2); // (B, G*G, D)
        let class_token = self
            .class_embedding
            .view([1, 1, width])
            .expand([batch, 1, width], false);
        let xs = Tensor::cat(&[class_token, tokens], 1) + &self.positional_embedding; // (B, G*G+1, D)
        xs.apply(&self.ln_pre)
    }

    fn blocks(&self) -> &Transformer {
        &self.transformer
    }

    /// (B, G*G+1, D) -> (B, E): `ln_post` of the class token, projected.
    fn head(&self, xs: &Tensor, _images: &Tensor) -> Tensor {
        // open_clip applies ln_post to every token and then takes the class token;
        // LayerNorm is per token, so normalising only the class token is the same.
        let pooled = xs.select(1, 0).apply(&self.ln_post); // (B, D)
        pooled.matmul(&self.proj) // (B, E)
    }
}

impl ModuleT for VisionTransformer {
    /// (B, 3, H, W) f32 images -> (B, E) features, not normalised.
    fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        let xs = self.transformer.forward_t(&self.stem(images), train);
        self.head(&xs, images)
    }
}
