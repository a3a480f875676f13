//! [`Clip`]: the two towers, the learned temperature (and SigLIP bias), and the
//! L2-normalised features the losses take.

use tch::nn::{self, Init, ModuleT};
use tch::{Kind, Tensor};

use super::config::ModelConfig;
use super::recompute::{backward_recomputing, forward_keeping_inputs, Tower, TowerTape};
use super::text::TextTransformer;
use super::vision::VisionTransformer;

/// A training forward pass the backward pass can go through: the features and scale, and for
/// each tower that recomputes its blocks (`model.grad_checkpointing`), its tape and input.
pub struct ForwardPass {
    /// L2-normalised fp32 image features (B, E).
    pub image_features: Tensor,
    /// L2-normalised fp32 text features (B, E).
    pub text_features: Tensor,
    /// exp(logit_scale), 0-dim.
    pub logit_scale: Tensor,
    image: Option<(TowerTape, Tensor)>,
    text: Option<(TowerTape, Tensor)>,
}

/// What [`Clip::backward_image`] leaves of a forward pass: the text tower's tape, if any.
#[derive(Debug)]
pub struct TextBackward {
    text: Option<(TowerTape, Tensor)>,
}

/// Backpropagates `surrogate` into `tower` (and whatever else it reaches): one call, then,
/// when the tower has a tape, one per recomputed block and one for its stem.
fn backward_tower(
    tower: &impl Tower,
    tape: Option<(TowerTape, Tensor)>,
    surrogate: &Tensor,
    train: bool,
    backprop: &mut Backprop,
) {
    let tops: Vec<&Tensor> = tape.iter().map(|(tape, _)| &tape.top).collect();
    let top_grad = backprop(surrogate, &tops).pop();
    recompute_tower(tower, tape, top_grad, train, backprop);
}

/// For a tower with a tape: its blocks from the last to the first, then its stem, each
/// recomputed with a graph and backpropagated from `top_grad` = ∂L/∂(tape.top).
fn recompute_tower(
    tower: &impl Tower,
    tape: Option<(TowerTape, Tensor)>,
    top_grad: Option<Tensor>,
    train: bool,
    backprop: &mut Backprop,
) {
    if let Some((tape, input)) = tape {
        let grad = top_grad.unwrap_or_else(|| tape.top.zeros_like());
        backward_recomputing(tower, &input, tape, grad, train, &mut |s, leaf| {
            backprop(s, leaf.into_iter().collect::<Vec<_>>().as_slice()).pop()
        });
    }
}

/// Backpropagates a surrogate into the parameters (adding their gradients to a step's) and
/// returns the gradients of the given leaves, in order.
pub type Backprop<'a> = dyn FnMut(&Tensor, &[&Tensor]) -> Vec<Tensor> + 'a;

/// The largest logit scale open_clip allows: exp(logit_scale) <= 100.
pub const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092; // ln(100)

/// The CLIP model. Variables: `visual.*`, the text tower's `token_embedding.weight`,
/// `positional_embedding`, `transformer.*`, `ln_final.*`, `text_projection`, and
/// the scalar `logit_scale`, and `logit_bias` only when the config sets
/// `init_logit_bias` (SigLIP).
///
/// ```
/// use trainer::tch::{nn::VarStore, Device, Kind, Tensor};
/// use trainer::{clip_loss, Clip, ModelConfig};
///
/// let vs = VarStore::new(Device::Cpu);
/// let clip = Clip::new(&vs.root(), &ModelConfig::preset("nano")?);
/// let images = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
/// let tokens = Tensor::from_slice(&[49406i64, 320, 49407, 49406, 1125, 49407]).view([2, 3]);
/// let (img, txt, scale) = clip.forward(&images, &tokens, true);
/// let loss = clip_loss(&img, &txt, &scale);
/// loss.backward();
/// clip.clamp_logit_scale(); // after the optimizer step
/// # Ok::<(), trainer::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct Clip {
    visual: VisionTransformer,
    text: TextTransformer,
    logit_scale: Tensor,
    logit_bias: Option<Tensor>,
    config: ModelConfig,
}

impl Clip {
    /// Creates the model's variables under `vs_root` (normally `vs.root()`), with
    /// open_clip's initialisation.
    ///
    /// Panics if `cfg` does not validate; every `ModelConfig` constructor
    /// (`preset`, `load`, `from_toml_file`, `from_open_clip_json`) has validated it.
    pub fn new(vs_root: &nn::Path, cfg: &ModelConfig) -> Clip {
        if let Err(err) = cfg.validate() {
            panic!("Clip::new needs a validated config: {err}");
        }
        let visual = VisionTransformer::new(vs_root / "visual", cfg);
        let text = TextTransformer::new(vs_root.clone(), cfg);
        let logit_scale = vs_root.var("logit_scale", &[], Init::Const(cfg.init_logit_scale));
        let logit_bias = cfg
            .init_logit_bias
            .map(|b| vs_root.var("logit_bias", &[], Init::Const(b)));
        Clip {
            visual,
            text,
            logit_scale,
            logit_bias,
            config: cfg.clone(),
        }
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// (B, 3, H, W) f32 normalised images -> (B, E) image features, not L2-normalised.
    /// `train` is passed to every block; the default CLIP has no dropout, so
    /// train and eval give the same numbers.
    pub fn encode_image(&self, images: &Tensor, train: bool) -> Tensor {
        self.visual.forward_t(images, train)
    }

    /// (B, L) i64 token ids (L <= context_length; the end-of-text token must be
    /// the largest id in each row) -> (B, E) text features, not L2-normalised.
    pub fn encode_text(&self, tokens: &Tensor, train: bool) -> Tensor {
        self.text.forward_t(tokens, train)
    }

    /// Both towers: (L2-normalised image features (B, E), L2-normalised text
    /// features (B, E), exp(logit_scale) as a 0-dim tensor). Like open_clip's
    /// forward, the scale is not clamped here: the train loop calls
    /// [`Clip::clamp_logit_scale`] after each optimizer step.
    pub fn forward(&self, images: &Tensor, tokens: &Tensor, train: bool) -> (Tensor, Tensor, Tensor) {
        // Under bf16 autocast (crate::precision) the towers end in bf16; the
        // features, the loss and its all-gather stay fp32.
        let image_features = l2_normalize(&to_fp32(self.encode_image(images, train)));
        let text_features = l2_normalize(&to_fp32(self.encode_text(tokens, train)));
        (image_features, text_features, self.logit_scale.exp())
    }

    /// [`Clip::forward`] for training, with activation checkpointing in the towers whose
    /// config asks for it: their features are graph-connected to the head only, and
    /// [`Clip::backward`] recomputes their blocks.
    pub fn forward_for_backward(&self, images: &Tensor, tokens: &Tensor, train: bool) -> ForwardPass {
        let (image_raw, image) = if self.config.vision_checkpointing() {
            let (features, tape) = forward_keeping_inputs(&self.visual, images, train);
            (features, Some((tape, images.shallow_clone())))
        } else {
            (self.encode_image(images, train), None)
        };
        let (text_raw, text) = if self.config.text_checkpointing() {
            let (features, tape) = forward_keeping_inputs(&self.text, tokens, train);
            (features, Some((tape, tokens.shallow_clone())))
        } else {
            (self.encode_text(tokens, train), None)
        };
        ForwardPass {
            image_features: l2_normalize(&to_fp32(image_raw)),
            text_features: l2_normalize(&to_fp32(text_raw)),
            logit_scale: self.logit_scale.exp(),
            image,
            text,
        }
    }

    /// Backpropagates `surrogate` (made from `pass`'s features, scale and bias) into every
    /// parameter through `backprop`: one call for the whole graph, then, for a tower with a
    /// tape, one per block from the last to the first and one for its stem, each
    /// recomputing that part with a graph (model/recompute.rs). Run it under the precision
    /// the forward pass ran under.
    pub fn backward(&self, pass: ForwardPass, surrogate: &Tensor, train: bool, backprop: &mut Backprop) {
        let tops: Vec<&Tensor> = [&pass.image, &pass.text]
            .into_iter()
            .flatten()
            .map(|(tape, _)| &tape.top)
            .collect();
        let mut top_grads = backprop(surrogate, &tops).into_iter();
        let image_grad = pass.image.as_ref().and_then(|_| top_grads.next());
        let text_grad = pass.text.as_ref().and_then(|_| top_grads.next());
        recompute_tower(&self.visual, pass.image, image_grad, train, backprop);
        recompute_tower(&self.text, pass.text, text_grad, train, backprop);
    }

    /// The first half of [`Clip::backward`] split by tower, for a step that reduces the image
    /// tower's gradients while the text tower backpropagates (`optim.overlap_reduce`):
    /// backpropagates `image_surrogate` (a function of `pass.image_features` only) through
    /// the image tower, recomputing its blocks when it has a tape. When it returns, every
    /// image-tower parameter has its whole gradient; [`Clip::backward_text`] does the rest.
    pub fn backward_image(
        &self,
        pass: ForwardPass,
        image_surrogate: &Tensor,
        train: bool,
        backprop: &mut Backprop,
    ) -> TextBackward {
        backward_tower(&self.visual, pass.image, image_surrogate, train, backprop);
        TextBackward { text: pass.text }
    }

    /// The second half: backpropagates `rest_surrogate` (the text features', scale's and
    /// bias's terms) through the text tower and the scalars.
    pub fn backward_text(&self, rest: TextBackward, rest_surrogate: &Tensor, train: bool, backprop: &mut Backprop) {
        backward_tower(&self.text, rest.text, rest_surrogate, train, backprop);
    }

    /// The learned log temperature (a 0-dim variable).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The learned SigLIP bias (0-dim), when the config has `init_logit_bias`.
    pub fn logit_bias(&self) -> Option<&Tensor> {
        self.logit_bias.as_ref()
    }

    /// Clamps `logit_scale` in place to [0, ln 100], as open_clip's train loop does
    /// after every optimizer step, so the temperature never exceeds 100.
    pub fn clamp_logit_scale(&self) {
        tch::no_grad(|| {
            let mut scale = self.logit_scale.shallow_clone();
            let _ = scale.clamp_(0.0, MAX_LOGIT_SCALE);
        });
    }
}

/// A reduced-precision (autocast) output as fp32; anything else unchanged.
fn to_fp32(xs: Tensor) -> Tensor {
    match xs.kind() {
        Kind::BFloat16 | Kind::Half => xs.to_kind(Kind::Float),
        _ => xs,
    }
}

/// `x / max(||x||_2, 1e-12)` along the last dimension (torch's F.normalize).
pub fn l2_normalize(xs: &Tensor) -> Tensor {
    let norm = xs.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true).clamp_min(1e-12);
    xs / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    fn nano() -> (VarStore, Clip) {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let cfg = ModelConfig::preset("nano").expect("nano");
        let clip = Clip::new(&vs.root(), &cfg);
        (vs, clip)
    }

    fn std_of(vs: &VarStore, name: &str) -> f64 {
        let vars = vs.variables();
        let t = vars.get(name).unwrap_or_else(|| panic!("no variable {name}"));
        t.std(true).double_value(&[])
    }

    #[test]
    fn shapes_and_normalisation() {
        let (_vs, clip) = nano();
        let images = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));
        let tokens = Tensor::from_slice(&[49406i64, 320, 49407, 0, 49406, 1125, 539, 49407]).view([2, 4]);
        assert_eq!(clip.encode_image(&images, false).size(), [3, 32]);
        assert_eq!(clip.encode_text(&tokens, false).size(), [2, 32]);
        let (img, txt, scale) = clip.forward(&images, &tokens, true);
        let norms = img.norm_scalaropt_dim(2.0, [-1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        assert_eq!(txt.size(), [2, 32]);
        assert!((scale.double_value(&[]) - 1.0 / 0.07).abs() < 1e-3);
    }

    #[test]
    fn init_follows_open_clip() {
        let (vs, _clip) = nano();
        // nano: vision width 64, text width 64, 2 text layers.
        let close = |got: f64, want: f64, name: &str| {
            assert!((got - want).abs() < 0.15 * want, "{name}: std {got}, want {want}");
        };
        close(std_of(&vs, "token_embedding.weight"), 0.02, "token_embedding");
        close(std_of(&vs, "positional_embedding"), 0.01, "positional_embedding");
        close(
            std_of(&vs, "visual.positional_embedding"),
            64f64.powf(-0.5),
            "visual.positional_embedding",
        );
        close(std_of(&vs, "visual.proj"), 64f64.powf(-0.5), "visual.proj");
        close(std_of(&vs, "text_projection"), 64f64.powf(-0.5), "text_projection");
        close(
            std_of(&vs, "transformer.resblocks.0.attn.in_proj_weight"),
            64f64.powf(-0.5),
            "text attn",
        );
        close(
            std_of(&vs, "transformer.resblocks.1.mlp.c_proj.weight"),
            0.125 * 0.5,
            "text proj_std",
        );
        close(
            std_of(&vs, "transformer.resblocks.0.mlp.c_fc.weight"),
            128f64.powf(-0.5),
            "text fc_std",
        );
        // Vision blocks keep PyTorch's defaults: xavier_uniform for the fused QKV
        // (std = bound/sqrt(3)), kaiming-uniform(a=sqrt 5) for the linears.
        close(
            std_of(&vs, "visual.transformer.resblocks.0.attn.in_proj_weight"),
            (6.0f64 / 256.0).sqrt() / 3f64.sqrt(),
            "vision qkv",
        );
        close(
            std_of(&vs, "visual.transformer.resblocks.0.mlp.c_fc.weight"),
            1.0 / (64f64.sqrt() * 3f64.sqrt()),
            "vision fc",
        );
        let vars = vs.variables();
        let zero = |name: &str| vars[name].abs().max().double_value(&[]) == 0.0;
        assert!(zero("visual.transformer.resblocks.0.attn.in_proj_bias"));
        assert!(zero("transformer.resblocks.1.attn.out_proj.bias"));
        assert!(!zero("transformer.resblocks.1.mlp.c_fc.bias"));
        assert!((vars["ln_final.weight"].mean(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-7);
        assert!((vars["logit_scale"].double_value(&[]) - (1.0f64 / 0.07).ln()).abs() < 1e-6);
    }

    #[test]
    fn variable_count_matches_num_params() {
        let (vs, clip) = nano();
        let total: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(total, clip.config().num_params());
        assert_eq!(vs.variables().len(), vs.trainable_variables().len());
    }

    #[test]
    fn text_is_causal() {
        let (_vs, clip) = nano();
        // Changing a token after the end-of-text token must not change the features.
        let a = Tensor::from_slice(&[49406i64, 320, 49407, 5, 6]).view([1, 5]);
        let b = Tensor::from_slice(&[49406i64, 320, 49407, 7, 8]).view([1, 5]);
        let diff = (clip.encode_text(&a, false) - clip.encode_text(&b, false))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(diff, 0.0);
        let c = Tensor::from_slice(&[49406i64, 321, 49407, 5, 6]).view([1, 5]);
        let diff = (clip.encode_text(&a, false) - clip.encode_text(&c, false))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff > 0.0);
    }

    #[test]
    fn clamp_logit_scale_caps_at_100() {
        let (_vs, clip) = nano();
        tch::no_grad(|| {
            let _ = clip.logit_scale().shallow_clone().fill_(7.0);
        });
        clip.clamp_logit_scale();
        assert!((clip.logit_scale().double_value(&[]) - MAX_LOGIT_SCALE).abs() < 1e-6);
        tch::no_grad(|| {
            let _ = clip.logit_scale().shallow_clone().fill_(-1.0);
        });
        clip.clamp_logit_scale();
        assert_eq!(clip.logit_scale().double_value(&[]), 0.0);
        assert!(clip.logit_scale().requires_grad());
    }

    #[test]
    fn gradients_reach_every_variable() {
        let (vs, clip) = nano();
        let images = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let tokens = Tensor::from_slice(&[49406i64, 320, 49407, 0, 49406, 1125, 539, 49407]).view([2, 4]);
        let (img, txt, scale) = clip.forward(&images, &tokens, true);
        crate::loss::clip_loss(&img, &txt, &scale).backward();
        for (name, var) in vs.variables() {
            let grad = var.grad();
            assert!(
                grad.defined() && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name} got no gradient"
            );
        }
    }
}
