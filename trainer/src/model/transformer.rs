//! The pre-LN transformer both towers share: open_clip's `Transformer` of
//! `ResidualAttentionBlock`s (fused-QKV multi-head attention, exact GELU MLP).

use tch::nn::{self, Init, ModuleT};
use tch::Tensor;

/// LayerNorm epsilon (torch's default, which open_clip uses).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// A LayerNorm over the last dimension, weight 1 and bias 0 at init.
pub fn layer_norm(p: nn::Path, width: i64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![width],
        nn::LayerNormConfig {
            eps: LAYER_NORM_EPS,
            ..Default::default()
        },
    )
}

/// PyTorch's default `nn.Linear`/`nn.Conv2d` init (kaiming_uniform with a=sqrt(5)):
/// uniform in ±1/sqrt(fan_in), used for weights and biases alike.
pub fn torch_default_uniform(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// How a tower initialises its blocks' weights (biases follow PyTorch's defaults:
/// the attention's in/out biases zero, the MLP's uniform in ±1/sqrt(fan_in)).
#[derive(Debug, Clone, Copy)]
pub struct BlockInit {
    /// `attn.in_proj_weight`.
    pub in_proj: Init,
    /// `attn.out_proj.weight`.
    pub out_proj: Init,
    /// `mlp.c_fc.weight`.
    pub c_fc: Init,
    /// `mlp.c_proj.weight`.
    pub c_proj: Init,
}

impl BlockInit {
    /// What an untouched `nn.MultiheadAttention` + `nn.Linear` gets; open_clip
    /// leaves its ViT blocks at these (xavier_uniform for the fused QKV).
    pub fn torch_default(width: i64, mlp_width: i64) -> Self {
        let xavier = (6.0 / (width + 3 * width) as f64).sqrt();
        BlockInit {
            in_proj: Init::Uniform {
                lo: -xavier,
                up: xavier,
            },
            out_proj: torch_default_uniform(width),
            c_fc: torch_default_uniform(width),
            c_proj: torch_default_uniform(mlp_width),
        }
    }

    /// open_clip's text-transformer init: normal with attn_std = width^-0.5,
    /// proj_std = width^-0.5 (2 layers)^-0.5, fc_std = (2 width)^-0.5.
    pub fn open_clip_text(width: i64, layers: i64) -> Self {
        let w = width as f64;
        let attn_std = w.powf(-0.5);
        let proj_std = w.powf(-0.5) * (2.0 * layers as f64).powf(-0.5);
        let fc_std = (2.0 * w).powf(-0.5);
        BlockInit {
            in_proj: Init::Randn {
                mean: 0.0,
                stdev: attn_std,
            },
            out_proj: Init::Randn {
                mean: 0.0,
                stdev: proj_std,
            },
            c_fc: Init::Randn {
                mean: 0.0,
                stdev: fc_std,
            },
            c_proj: Init::Randn {
                mean: 0.0,
                stdev: proj_std,
            },
        }
    }
}

/// Multi-head self-attention with open_clip's (`nn.MultiheadAttention`'s) parameters:
/// `in_proj_weight` (3D, D) holding q, k, v stacked, `in_proj_bias`, `out_proj`.
#[derive(Debug)]
pub struct SelfAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    heads: i64,
    causal: bool,
}

impl SelfAttention {
    /// Variables under `p`: `in_proj_weight`, `in_proj_bias`, `out_proj.{weight,bias}`.
    pub fn new(p: nn::Path, width: i64, heads: i64, causal: bool, init: &BlockInit) -> Self {
        let in_proj_weight = p.var("in_proj_weight", &[3 * width, width], init.in_proj);
        let in_proj_bias = p.var("in_proj_bias", &[3 * width], Init::Const(0.0));
        let out_proj = nn::linear(
            &p / "out_proj",
            width,
            width,
            nn::LinearConfig {
                ws_init: init.out_proj,
                bs_init: Some(Init::Const(0.0)),
                bias: true,
            },
        );
        SelfAttention {
            in_proj_weight,
            in_proj_bias,
            out_proj,
            heads,
            causal,
        }
    }
}

impl ModuleT for SelfAttention {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let (batch, len, width) = xs.size3().expect("attention input must be (B, L, D)");
        let head_width = width / self.heads;
        // (B, L, 3D) -> (3, B, H, L, Dh)
        let qkv = xs
            .linear(&self.in_proj_weight, Some(&self.in_proj_bias))
            .view([batch, len, 3, self.heads, head_width])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2)); // each (B, H, L, Dh)
                                                              // Scale 1/sqrt(Dh) is the default; no dropout (open_clip's attn dropout is 0).
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, self.causal, None, false);
        // (B, H, L, Dh) -> (B, L, D)
        let merged = attended.transpose(1, 2).reshape([batch, len, width]);
        merged.apply(&self.out_proj)
    }
}

/// The MLP: `c_fc` (D -> H), exact erf GELU, `c_proj` (H -> D).
#[derive(Debug)]
pub struct Mlp {
    c_fc: nn::Linear,
    c_proj: nn::Linear,
}

impl Mlp {
    /// Variables under `p`: `c_fc.{weight,bias}`, `c_proj.{weight,bias}`.
    pub fn new(p: nn::Path, width: i64, mlp_width: i64, init: &BlockInit) -> Self {
        let c_fc = nn::linear(
            &p / "c_fc",
            width,
            mlp_width,
            nn::LinearConfig {
                ws_init: init.c_fc,
                bs_init: Some(torch_default_uniform(width)),
                bias: true,
            },
        );
        let c_proj = nn::linear(
            &p / "c_proj",
            mlp_width,
            width,
            nn::LinearConfig {
                ws_init: init.c_proj,
                bs_init: Some(torch_default_uniform(mlp_width)),
                bias: true,
            },
        );
        Mlp { c_fc, c_proj }
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        // (B, L, D) -> (B, L, H) -> (B, L, D)
        xs.apply(&self.c_fc).gelu("none").apply(&self.c_proj)
    }
}

/// One pre-LN residual block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Debug)]
pub struct ResidualAttentionBlock {
    ln_1: nn::LayerNorm,
    attn: SelfAttention,
    ln_2: nn::LayerNorm,
    mlp: Mlp,
}

impl ResidualAttentionBlock {
    /// Variables under `p`: `ln_1`, `attn.*`, `ln_2`, `mlp.*`.
    pub fn new(p: nn::Path, width: i64, heads: i64, mlp_width: i64, causal: bool, init: &BlockInit) -> Self {
        ResidualAttentionBlock {
            ln_1: layer_norm(&p / "ln_1", width),
            attn: SelfAttention::new(&p / "attn", width, heads, causal, init),
            ln_2: layer_norm(&p / "ln_2", width),
            mlp: Mlp::new(&p / "mlp", width, mlp_width, init),
        }
    }
}

impl ModuleT for ResidualAttentionBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // (B, L, D) throughout
        let xs = xs + self.attn.forward_t(&xs.apply(&self.ln_1), train);
        &xs + self.mlp.forward_t(&xs.apply(&self.ln_2), train)
    }
}

/// A stack of residual blocks: open_clip's `Transformer` (`resblocks.{i}`).
#[derive(Debug)]
pub struct Transformer {
    resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    /// Variables under `p`: `resblocks.{0..layers}.*`. `causal` masks attention to
    /// earlier positions (the text tower), as open_clip's additive -inf mask does.
    pub fn new(
        p: nn::Path,
        width: i64,
        layers: i64,
        heads: i64,
        mlp_width: i64,
        causal: bool,
        init: &BlockInit,
    ) -> Self {
        let blocks = &p / "resblocks";
        let resblocks = (0..layers)
            .map(|i| ResidualAttentionBlock::new(&blocks / i, width, heads, mlp_width, causal, init))
            .collect();
        Transformer { resblocks }
    }

    /// The blocks, first to last.
    pub fn iter(&self) -> std::slice::Iter<'_, ResidualAttentionBlock> {
        self.resblocks.iter()
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.resblocks.len()
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.resblocks.is_empty()
    }
}

impl ModuleT for Transformer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // (B, L, D) -> (B, L, D)
        let mut xs = xs.shallow_clone();
        for block in &self.resblocks {
            xs = block.forward_t(&xs, train);
        }
        xs
    }
}
