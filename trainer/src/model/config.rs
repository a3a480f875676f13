//! The model's config section: embedding size and the two towers' dimensions.
//!
//! A model config is a TOML table (`configs/models/<name>.toml`, or the `[model]`
//! section of a run config), one of the built-in presets (`nano`, `tiny`,
//! `vit-b-32`, `vit-b-16`, `vit-l-14`, `vit-h-14`), or an open_clip `model_configs/*.json` file restricted to what
//! this crate implements (a plain ViT image tower and a causal text transformer
//! with argmax pooling, exact GELU, no biases on the projections).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The presets built into the binary, from `configs/models/*.toml`.
const PRESETS: &[(&str, &str)] = &[
    ("nano", include_str!("../../../configs/models/nano.toml")),
    ("tiny", include_str!("../../../configs/models/tiny.toml")),
    ("vit-b-32", include_str!("../../../configs/models/vit-b-32.toml")),
    ("vit-b-16", include_str!("../../../configs/models/vit-b-16.toml")),
    ("vit-l-14", include_str!("../../../configs/models/vit-l-14.toml")),
    ("vit-h-14", include_str!("../../../configs/models/vit-h-14.toml")),
];

/// Errors from reading or checking a model config; each names the file or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value the model cannot be built with.
    #[error("invalid model config: {field} {reason}")]
    Invalid {
        /// The field, e.g. `model.vision.width`.
        field: &'static str,
        /// What is wrong with its value, e.g. `(100) must be divisible by ...`.
        reason: String,
    },
    /// The config file could not be read.
    #[error("cannot read model config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML did not parse or had unknown/missing fields.
    #[error("model config {origin}: {source}")]
    Toml {
        /// The file, or `preset <name>`.
        origin: String,
        /// The parser's error (names the field and line).
        source: toml::de::Error,
    },
    /// The open_clip JSON did not parse or had a field of the wrong type.
    #[error("open_clip model config {path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The open_clip JSON asks for something this crate does not implement.
    #[error("open_clip model config {path}: `{key}` = {value} is not supported ({reason})")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `vision_cfg.timm_model_name`.
        key: String,
        /// Its value as written.
        value: String,
        /// Why it cannot be honoured.
        reason: &'static str,
    },
    /// Neither a file nor a known preset name.
    #[error("unknown model preset `{name}` (known: {known}); a config file must end in .toml or .json")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The known preset names, comma separated.
        known: String,
    },
}

/// The CLIP model's dimensions. Field names follow open_clip's configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Size of the joint image-text embedding both towers project to.
    pub embed_dim: i64,
    /// The image tower (a ViT).
    pub vision: VisionConfig,
    /// The text tower (a causal transformer).
    pub text: TextConfig,
    /// Initial value of the learned log temperature `logit_scale` (open_clip: ln(1/0.07)).
    #[serde(default = "default_init_logit_scale")]
    pub init_logit_scale: f64,
    /// Initial value of the learned `logit_bias`, the SigLIP loss's bias (open_clip
    /// SigLIP models: −10). Absent for CLIP models, which have no such parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_logit_bias: Option<f64>,
    /// Activation checkpointing in both towers (open_clip's `--grad-checkpointing`): blocks
    /// keep only their inputs and are recomputed in the backward pass — less memory, about
    /// a third more compute, the same gradients. `vision.grad_checkpointing` and
    /// `text.grad_checkpointing` choose per tower. Not part of the architecture: a run may
    /// resume with it changed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub grad_checkpointing: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl ModelConfig {
    /// Whether the image tower recomputes its blocks in the backward pass.
    pub fn vision_checkpointing(&self) -> bool {
        self.vision.grad_checkpointing.unwrap_or(self.grad_checkpointing)
    }

    /// Whether the text tower recomputes its blocks in the backward pass.
    pub fn text_checkpointing(&self) -> bool {
        self.text.grad_checkpointing.unwrap_or(self.grad_checkpointing)
    }
}

/// The ViT image tower: patchify with a strided conv, prepend a class token,
/// pre-LN transformer, LayerNorm then project the class token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    /// Side of the square input image in pixels.
    pub image_size: i64,
    /// Side of a square patch in pixels; must divide `image_size`.
    pub patch_size: i64,
    /// Transformer width (channels per token).
    pub width: i64,
    /// Number of residual blocks.
    pub layers: i64,
    /// Channels per attention head; heads = width / head_width.
    #[serde(default = "default_head_width")]
    pub head_width: i64,
    /// MLP hidden width = floor(width * mlp_ratio), as open_clip computes it.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Activation checkpointing in this tower; unset: `model.grad_checkpointing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_checkpointing: Option<bool>,
}

/// The text tower: token + learned positional embeddings, causal pre-LN
/// transformer, final LayerNorm, features of the end-of-text token (the largest
/// id in each row), linear projection without bias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Maximum number of tokens per text (the positional embedding's length).
    #[serde(default = "default_context_length")]
    pub context_length: i64,
    /// Number of token ids (CLIP BPE: 49408).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: i64,
    /// Transformer width.
    pub width: i64,
    /// Number of attention heads; must divide `width`.
    pub heads: i64,
    /// Number of residual blocks.
    pub layers: i64,
    /// MLP hidden width = floor(width * mlp_ratio).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Activation checkpointing in this tower; unset: `model.grad_checkpointing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_checkpointing: Option<bool>,
}

fn default_init_logit_scale() -> f64 {
    (1.0f64 / 0.07).ln()
}
fn default_head_width() -> i64 {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_context_length() -> i64 {
    77
}
fn default_vocab_size() -> i64 {
    49408
}

impl VisionConfig {
    /// Number of attention heads.
    pub fn heads(&self) -> i64 {
        self.width / self.head_width
    }
    /// Patches per side.
    pub fn grid_size(&self) -> i64 {
        self.image_size / self.patch_size
    }
    /// Tokens in the sequence: the patches plus the class token.
    pub fn num_tokens(&self) -> i64 {
        self.grid_size() * self.grid_size() + 1
    }
    /// Hidden width of each block's MLP.
    pub fn mlp_width(&self) -> i64 {
        mlp_width(self.width, self.mlp_ratio)
    }
}

impl TextConfig {
    /// Hidden width of each block's MLP.
    pub fn mlp_width(&self) -> i64 {
        mlp_width(self.width, self.mlp_ratio)
    }
}

/// open_clip computes `int(d_model * mlp_ratio)`, truncating.
fn mlp_width(width: i64, mlp_ratio: f64) -> i64 {
    (width as f64 * mlp_ratio) as i64
}

fn positive(field: &'static str, value: i64) -> Result<(), ConfigError> {
    if value <= 0 {
        return Err(invalid(field, format!("({value}) must be positive")));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

impl ModelConfig {
    /// Checks every field; the error names the first bad one, e.g.
    /// "model.vision.width (100) must be divisible by model.vision.head_width (64)".
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("model.embed_dim", self.embed_dim)?;
        let v = &self.vision;
        positive("model.vision.image_size", v.image_size)?;
        positive("model.vision.patch_size", v.patch_size)?;
        positive("model.vision.width", v.width)?;
        positive("model.vision.layers", v.layers)?;
        positive("model.vision.head_width", v.head_width)?;
        if v.image_size % v.patch_size != 0 {
            return Err(invalid(
                "model.vision.image_size",
                format!(
                    "({}) must be divisible by model.vision.patch_size ({})",
                    v.image_size, v.patch_size
                ),
            ));
        }
        if v.width % v.head_width != 0 {
            return Err(invalid(
                "model.vision.width",
                format!(
                    "({}) must be divisible by model.vision.head_width ({})",
                    v.width, v.head_width
                ),
            ));
        }
        if !(v.mlp_ratio.is_finite() && v.mlp_width() >= 1) {
            return Err(invalid(
                "model.vision.mlp_ratio",
                format!("({}) must give an MLP width of at least 1", v.mlp_ratio),
            ));
        }
        let t = &self.text;
        positive("model.text.context_length", t.context_length)?;
        positive("model.text.vocab_size", t.vocab_size)?;
        positive("model.text.width", t.width)?;
        positive("model.text.heads", t.heads)?;
        positive("model.text.layers", t.layers)?;
        if t.width % t.heads != 0 {
            return Err(invalid(
                "model.text.width",
                format!("({}) must be divisible by model.text.heads ({})", t.width, t.heads),
            ));
        }
        if !(t.mlp_ratio.is_finite() && t.mlp_width() >= 1) {
            return Err(invalid(
                "model.text.mlp_ratio",
                format!("({}) must give an MLP width of at least 1", t.mlp_ratio),
            ));
        }
        if self.init_logit_bias.is_some_and(|b| !b.is_finite()) {
            return Err(invalid(
                "model.init_logit_bias",
                format!("({:?}) must be finite", self.init_logit_bias),
            ));
        }
        if !self.init_logit_scale.is_finite() {
            return Err(invalid(
                "model.init_logit_scale",
                format!("({}) must be finite", self.init_logit_scale),
            ));
        }
        Ok(())
    }

    /// Parses and validates a TOML model config; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: ModelConfig = toml::from_str(text).map_err(|source| ConfigError::Toml {
            origin: origin.to_string(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a TOML model config file (the layout of `configs/models/*.toml`).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = read(path)?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// A built-in preset: `nano` (tests), `tiny` (demo), and open_clip's `vit-b-32`,
    /// `vit-b-16`, `vit-l-14`, `vit-h-14`.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let (_, text) = PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ConfigError::UnknownPreset {
                name: name.to_string(),
                known: Self::preset_names().join(", "),
            })?;
        Self::from_toml_str(text, &format!("preset {name}"))
    }

    /// Names of the built-in presets.
    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(n, _)| *n).collect()
    }

    /// A `.toml` file, an open_clip `.json` file, or else a preset name.
    pub fn load(path_or_preset: &str) -> Result<Self, ConfigError> {
        let path = Path::new(path_or_preset);
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::from_toml_file(path),
            Some("json") => Self::from_open_clip_json(path),
            _ => Self::preset(path_or_preset),
        }
    }

    /// Reads an open_clip `model_configs/*.json` file. Keys that would change the
    /// architecture away from what this crate implements (timm or HF towers,
    /// QuickGELU, attentional pooling, layer scale, custom blocks, ...) are
    /// rejected with an error naming the key; such keys are accepted only when
    /// they hold open_clip's default value.
    pub fn from_open_clip_json(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = read(path)?;
        let root: Value = serde_json::from_str(&text).map_err(|e| ConfigError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // An exported folder's `open_clip_config.json` wraps the model config as
        // `{"model_cfg": ..., "preprocess_cfg": ...}` (open_clip's `local-dir:` layout).
        let model = match root.get("model_cfg") {
            Some(inner) if root.get("vision_cfg").is_none() => inner,
            _ => &root,
        };
        OpenClipJson { path }.parse(model)
    }

    /// Number of trainable parameters, counted from the dimensions (no allocation).
    pub fn num_params(&self) -> i64 {
        let v = &self.vision;
        let t = &self.text;
        let block = |d: i64, h: i64| {
            2 * 2 * d // ln_1, ln_2
                + 3 * d * d + 3 * d // in_proj
                + d * d + d // out_proj
                + h * d + h // c_fc
                + d * h + d // c_proj
        };
        let vision = v.width * 3 * v.patch_size * v.patch_size // conv1, no bias
            + v.width // class_embedding
            + v.num_tokens() * v.width // positional_embedding
            + 2 * 2 * v.width // ln_pre, ln_post
            + v.layers * block(v.width, v.mlp_width())
            + v.width * self.embed_dim; // proj
        let text = t.vocab_size * t.width
            + t.context_length * t.width
            + t.layers * block(t.width, t.mlp_width())
            + 2 * t.width // ln_final
            + t.width * self.embed_dim; // text_projection
        vision + text + 1 // logit_scale
    }
}

/// Which model a run trains: a preset name (`tiny`), a path to a model TOML/open_clip
/// JSON, or an inline `[model]` table (what a resolved run config holds).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// Preset name or file path, resolved by [`ModelConfig::load`].
    Named(String),
    /// The model config written out in full.
    Inline(ModelConfig),
}

/// A `model = ...` entry that does not give a usable model; names the entry.
#[derive(Debug, thiserror::Error)]
#[error("{entry}")]
pub struct ModelSpecError {
    /// `model = "<name>"` or `[model]`.
    pub entry: String,
    /// Why it does not resolve.
    #[source]
    pub source: ConfigError,
}

impl ModelSpec {
    /// The concrete model config.
    pub fn resolve(&self) -> Result<ModelConfig, ModelSpecError> {
        match self {
            ModelSpec::Named(name) => ModelConfig::load(name).map_err(|source| ModelSpecError {
                entry: format!("model = {name:?}"),
                source,
            }),
            ModelSpec::Inline(cfg) => {
                cfg.validate().map_err(|source| ModelSpecError {
                    entry: "[model]".into(),
                    source,
                })?;
                Ok(cfg.clone())
            }
        }
    }
}

impl Serialize for ModelSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelSpec::Named(n) => s.serialize_str(n),
            ModelSpec::Inline(c) => c.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => Ok(ModelSpec::Named(s)),
            v @ toml::Value::Table(_) => ModelConfig::deserialize(v)
                .map(ModelSpec::Inline)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "expected a preset name, a file path or a [model] table, got {}",
                other.type_str()
            ))),
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The open_clip JSON reader; holds the path for error messages.
struct OpenClipJson<'a> {
    path: &'a Path,
}

/// Keys we honour, per section.
const TOP_KEYS: &[&str] = &[
    "embed_dim",
    "vision_cfg",
    "text_cfg",
    "init_logit_scale",
    "init_logit_bias",
];
const VISION_KEYS: &[&str] = &["image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio"];
const TEXT_KEYS: &[&str] = &["context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"];

/// Keys accepted only when they hold open_clip's default (what we implement).
fn accepted_default(section: &str, key: &str, value: &Value) -> bool {
    let is_false = || value == &Value::Bool(false) || value.is_null();
    let is_zero = || value.as_f64() == Some(0.0) || value.is_null();
    match (section, key) {
        ("", "quick_gelu") | ("", "custom_text") => is_false(),
        ("vision_cfg", "ls_init_value") | ("text_cfg", "ls_init_value") => value.is_null(),
        ("vision_cfg", "patch_dropout") => is_zero(),
        ("vision_cfg", "attentional_pool")
        | ("vision_cfg", "no_ln_pre")
        | ("vision_cfg", "final_ln_after_pool")
        | ("vision_cfg", "output_tokens")
        | ("text_cfg", "embed_cls")
        | ("text_cfg", "no_causal_mask")
        | ("text_cfg", "final_ln_after_pool")
        | ("text_cfg", "proj_bias")
        | ("text_cfg", "output_tokens") => is_false(),
        ("vision_cfg", "timm_model_name") | ("text_cfg", "hf_model_name") => value.is_null(),
        ("vision_cfg", "pos_embed_type") => value.as_str() == Some("learnable"),
        ("vision_cfg", "pool_type") => value.as_str() == Some("tok"),
        ("text_cfg", "pool_type") => value.as_str() == Some("argmax"),
        ("text_cfg", "proj_type") => value.as_str() == Some("linear"),
        ("vision_cfg", "block_type") | ("text_cfg", "block_type") => {
            value.is_null() || value.as_str() == Some("default")
        }
        _ => false,
    }
}

impl OpenClipJson<'_> {
    fn json_err(&self, message: String) -> ConfigError {
        ConfigError::Json {
            path: self.path.to_path_buf(),
            message,
        }
    }

    /// Checks that every key of `obj` is honoured or holds its default.
    fn check_keys(
        &self,
        section: &str,
        obj: &serde_json::Map<String, Value>,
        known: &[&str],
    ) -> Result<(), ConfigError> {
        for (key, value) in obj {
            if known.contains(&key.as_str()) || accepted_default(section, key, value) {
                continue;
            }
            let full = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            let reason = if accepted_default(section, key, &Value::Null)
                || accepted_default(section, key, &Value::Bool(false))
            {
                "ferroclip implements only open_clip's default for this key"
            } else {
                "ferroclip does not implement this option"
            };
            return Err(ConfigError::Unsupported {
                path: self.path.to_path_buf(),
                key: full,
                value: value.to_string(),
                reason,
            });
        }
        Ok(())
    }

    fn object<'v>(
        &self,
        key: &str,
        value: Option<&'v Value>,
    ) -> Result<&'v serde_json::Map<String, Value>, ConfigError> {
        value
            .ok_or_else(|| self.json_err(format!("missing `{key}`")))?
            .as_object()
            .ok_or_else(|| self.json_err(format!("`{key}` must be an object")))
    }

    fn int(
        &self,
        section: &str,
        obj: &serde_json::Map<String, Value>,
        key: &str,
        default: Option<i64>,
    ) -> Result<i64, ConfigError> {
        let full = if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        };
        match obj.get(key) {
            None => default.ok_or_else(|| self.json_err(format!("missing `{full}`"))),
            Some(v) => v.as_i64().ok_or_else(|| {
                let hint = if v.is_array() && key == "layers" {
                    " (a list of layers means a ModifiedResNet image tower, which ferroclip does not implement)"
                } else {
                    ""
                };
                self.json_err(format!("`{full}` must be an integer, got {v}{hint}"))
            }),
        }
    }

    fn float(
        &self,
        section: &str,
        obj: &serde_json::Map<String, Value>,
        key: &str,
        default: f64,
    ) -> Result<f64, ConfigError> {
        match obj.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.json_err(format!("`{section}.{key}` must be a number, got {v}"))),
        }
    }

    fn parse(&self, root: &Value) -> Result<ModelConfig, ConfigError> {
        let top = root
            .as_object()
            .ok_or_else(|| self.json_err("the file must hold a JSON object".into()))?;
        self.check_keys("", top, TOP_KEYS)?;
        let vision = self.object("vision_cfg", top.get("vision_cfg"))?;
        self.check_keys("vision_cfg", vision, VISION_KEYS)?;
        let text = self.object("text_cfg", top.get("text_cfg"))?;
        self.check_keys("text_cfg", text, TEXT_KEYS)?;
        let init_logit_scale = match top.get("init_logit_scale") {
            None => default_init_logit_scale(),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.json_err(format!("`init_logit_scale` must be a number, got {v}")))?,
        };
        let init_logit_bias = match top.get("init_logit_bias") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .ok_or_else(|| self.json_err(format!("`init_logit_bias` must be a number, got {v}")))?,
            ),
        };
        let cfg = ModelConfig {
            init_logit_bias,
            embed_dim: self.int("", top, "embed_dim", None)?,
            vision: VisionConfig {
                image_size: self.int("vision_cfg", vision, "image_size", Some(224))?,
                patch_size: self.int("vision_cfg", vision, "patch_size", Some(16))?,
                width: self.int("vision_cfg", vision, "width", Some(768))?,
                layers: self.int("vision_cfg", vision, "layers", Some(12))?,
                head_width: self.int("vision_cfg", vision, "head_width", Some(default_head_width()))?,
                mlp_ratio: self.float("vision_cfg", vision, "mlp_ratio", default_mlp_ratio())?,
                grad_checkpointing: None,
            },
            text: TextConfig {
                context_length: self.int("text_cfg", text, "context_length", Some(default_context_length()))?,
                vocab_size: self.int("text_cfg", text, "vocab_size", Some(default_vocab_size()))?,
                width: self.int("text_cfg", text, "width", Some(512))?,
                heads: self.int("text_cfg", text, "heads", Some(8))?,
                layers: self.int("text_cfg", text, "layers", Some(12))?,
                mlp_ratio: self.float("text_cfg", text, "mlp_ratio", default_mlp_ratio())?,
                grad_checkpointing: None,
            },
            init_logit_scale,
            grad_checkpointing: false,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
