//! The text tower (open_clip's `TextTransformer` with its defaults: causal
//! attention, `ln_final`, argmax (end-of-text) pooling, bias-free projection).
//! In open_clip's `CLIP` its variables sit at the top level of the state_dict.

use tch::nn::{self, Init, ModuleT};
use tch::{Kind, Tensor};

use super::config::ModelConfig;
use super::recompute::Tower;
use super::transformer::{layer_norm, BlockInit, Transformer};

/// The text tower; variables `token_embedding.weight`, `positional_embedding`,
/// `transformer.*`, `ln_final.*`, `text_projection` under the path it is given.
#[derive(Debug)]
pub struct TextTransformer {
    token_embedding: nn::Embedding,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: nn::LayerNorm,
    text_projection: Tensor,
    context_length: i64,
}

impl TextTransformer {
    /// Creates the tower's variables under `p` (the caller passes the root).
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let t = &cfg.text;
        let token_embedding = nn::embedding(
            &p / "token_embedding",
            t.vocab_size,
            t.width,
            nn::EmbeddingConfig {
                ws_init: Init::Randn { mean: 0.0, stdev: 0.02 },
                ..Default::default()
            },
        );
        let positional_embedding = p.var(
            "positional_embedding",
            &[t.context_length, t.width],
            Init::Randn { mean: 0.0, stdev: 0.01 },
        );
        let transformer = Transformer::new(
            &p / "transformer",
            t.width,
            t.layers,
            t.heads,
            t.mlp_width(),
            true,
            &BlockInit::open_clip_text(t.width, t.layers),
        );
        let ln_final = layer_norm(&p / "ln_final", t.width);
        let text_projection = p.var(
            "text_projection",
            &[t.width, cfg.embed_dim],
            Init::Randn {
                mean: 0.0,
                stdev: (t.width as f64).powf(-0.5),
            },
        );
        TextTransformer {
            token_embedding,
            positional_embedding,
            transformer,
            ln_final,
            text_projection,
            context_length: t.context_length,
        }
    }
}

impl Tower for TextTransformer {
    /// (B, L) token ids -> (B, L, D): token and position embeddings.
    fn stem(&self, tokens: &Tensor) -> Tensor {
        let (_, len) = tokens.size2().expect("tokens must be (B, L)");
        assert!(
            len <= self.context_length,
            "text of {len} tokens is longer than the model's context_length {}",
            self.context_length
        );
        tokens.apply(&self.token_embedding) + self.positional_embedding.narrow(0, 0, len)
        // (B, L, D)
    }

    fn blocks(&self) -> &Transformer {
        &self.transformer
    }

    /// (B, L, D) -> (B, E): the end-of-text position (each row's largest id), `ln_final`,
    /// projected.
    fn head(&self, xs: &Tensor, tokens: &Tensor) -> Tensor {
        let batch = tokens.size()[0];
        let eot = tokens.argmax(-1, false); // (B,)
        let rows = Tensor::arange(batch, (Kind::Int64, tokens.device()));
        // open_clip applies ln_final to every position before pooling; LayerNorm is
        // per position, so normalising only the pooled one gives the same numbers.
        let pooled = xs.index(&[Some(rows), Some(eot)]).apply(&self.ln_final); // (B, D)
        pooled.matmul(&self.text_projection) // (B, E)
    }
}

impl ModuleT for TextTransformer {
    /// (B, L) i64 token ids, L <= context_length -> (B, E) features, not
    /// normalised. The features come from each row's largest id (CLIP's
    /// end-of-text token is the largest id in its vocabulary).
    fn forward_t(&self, tokens: &Tensor, train: bool) -> Tensor {
        let xs = self.transformer.forward_t(&self.stem(tokens), train); // (B, L, D)
        self.head(&xs, tokens)
    }
}
