"""Reference fixtures for `trainer::interop` (loading open_clip weights) and
tests/cli_export.rs (the key set `ferroclip export` must write).

Builds open_clip 3.3.0's `open_clip.model.CLIP` for a small SigLIP-flavoured config
(so `logit_bias` is part of the key set; a 500-token vocabulary and width 32 keep
the weights near 300 KB, where the `nano` preset's 49408-token embedding alone
would be 12 MB), with seeded random weights (biases, LayerNorms, logit_scale and
logit_bias moved away from their init so every tensor matters), runs 4 fixed
random images and 4 token rows through it and saves:

    trainer/tests/fixtures/interop_open_clip_config.json  the config, open_clip's JSON format
    trainer/tests/fixtures/interop_open_clip.safetensors  model.state_dict(), as open_clip saves it
    trainer/tests/fixtures/interop_io.safetensors         images, tokens, L2-normalised
                                                          image/text embeddings, logit_scale_exp
    trainer/tests/fixtures/interop_keys.json              state_dict key -> shape, and the buffers

Run from the repository root (reference env, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_interop_fixture.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import open_clip

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "trainer", "tests", "fixtures")

CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
    "init_logit_bias": -10.0,
}


def make_tokens(gen, batch, context_length, vocab_size):
    """Rows of ids below vocab_size whose last real token is vocab_size - 1 (the
    end-of-text stand-in, the largest id so argmax pooling finds it), zero padded."""
    lengths = [4, context_length, 1, 11][:batch]
    rows = torch.zeros(batch, context_length, dtype=torch.long)
    for i, n in enumerate(lengths):
        rows[i, : n - 1] = torch.randint(1, vocab_size - 1, (n - 1,), generator=gen)
        rows[i, n - 1] = vocab_size - 1
    return rows


def main():
    torch.manual_seed(5)
    model = open_clip.model.CLIP(**CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-7.5)
    model.eval()

    gen = torch.Generator().manual_seed(6)
    images = torch.randn(4, 3, 32, 32, generator=gen)
    text_cfg = CONFIG["text_cfg"]
    tokens = make_tokens(gen, 4, text_cfg["context_length"], text_cfg["vocab_size"])
    with torch.no_grad():
        image_embeddings = F.normalize(model.encode_image(images), dim=-1)
        text_embeddings = F.normalize(model.encode_text(tokens), dim=-1)

    os.makedirs(FIXTURES, exist_ok=True)
    with open(os.path.join(FIXTURES, "interop_open_clip_config.json"), "w") as f:
        json.dump(CONFIG, f, indent=4)
        f.write("\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(FIXTURES, "interop_open_clip.safetensors"))
    save_file(
        {
            "images": images,
            "tokens": tokens,
            "image_embeddings": image_embeddings,
            "text_embeddings": text_embeddings,
            "logit_scale_exp": model.logit_scale.exp().detach().reshape(()),
        },
        os.path.join(FIXTURES, "interop_io.safetensors"),
    )
    keys = {
        "open_clip_version": open_clip.__version__,
        "state_dict": {k: list(v.shape) for k, v in state.items()},
        "buffers": [n for n, _ in model.named_buffers()],
    }
    with open(os.path.join(FIXTURES, "interop_keys.json"), "w") as f:
        json.dump(keys, f, indent=1)
        f.write("\n")
    print(f"{len(state)} tensors, {sum(v.numel() for v in state.values())} values; buffers {keys['buffers']}")


if __name__ == "__main__":
    main()
