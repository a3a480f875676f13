"""Reference fixtures for trainer/tests/model_parity.rs (the CLIP model and ClipLoss).

Builds open_clip 3.3.0's `open_clip.model.CLIP` for a small fixture config (close to
the `nano` preset but with a 500-token vocabulary so the weights stay small), gives
it seeded random weights (LayerNorm weights/biases, all biases and logit_scale are
moved away from their init so the Rust test exercises them), runs a batch of 4
random images and 4 token rows through it, and saves what the Rust port must
reproduce. It also records open_clip's state_dict keys and shapes for the `nano`
preset and the parameter counts of every preset in configs/models/.

Run from the repository root (needs the reference env, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_model_fixtures.py

Optional reverse check (a safetensors file written by ferroclip's
`trainer::weights::save_safetensors` for the nano preset must load into
open_clip with strict=True):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_model_fixtures.py \
        --check-ours path/to/nano.safetensors

Writes, under trainer/tests/fixtures/:
    model_parity_config.json         the fixture config, in open_clip's JSON format
    model_parity_weights.safetensors the state_dict (no buffers)
    model_parity_io.safetensors      inputs and open_clip's outputs
    model_reference.json             nano's state_dict shapes, preset parameter counts
"""
import argparse
import json
import math
import os
import tomllib

import torch
from safetensors.torch import load_file, save_file

import open_clip
from open_clip.loss import ClipLoss

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "trainer", "tests", "fixtures")
PRESETS = ["nano", "tiny", "vit-b-32", "vit-b-16", "vit-l-14", "vit-h-14"]

PARITY_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 2},
}


def preset_to_open_clip(name):
    """Our TOML preset -> the kwargs of open_clip.model.CLIP."""
    with open(os.path.join(ROOT, "configs", "models", f"{name}.toml"), "rb") as f:
        cfg = tomllib.load(f)
    kwargs = {"embed_dim": cfg["embed_dim"], "vision_cfg": dict(cfg["vision"]), "text_cfg": dict(cfg["text"])}
    if "init_logit_scale" in cfg:
        kwargs["init_logit_scale"] = cfg["init_logit_scale"]
    return kwargs


def build(kwargs):
    return open_clip.model.CLIP(**kwargs)


def make_tokens(gen, batch, context_length, vocab_size):
    """Rows of ids < vocab_size; the EOT stand-in is vocab_size - 1, the largest id of
    its row (so argmax pooling finds it), followed by zero padding."""
    lengths = [5, context_length, 1, 9][:batch]
    rows = torch.zeros(batch, context_length, dtype=torch.long)
    for i, n in enumerate(lengths):
        rows[i, : n - 1] = torch.randint(1, vocab_size - 1, (n - 1,), generator=gen)
        rows[i, n - 1] = vocab_size - 1
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check-ours", help="safetensors written by ferroclip for the nano preset")
    args = parser.parse_args()

    if args.check_ours:
        model = build(preset_to_open_clip("nano"))
        result = model.load_state_dict(load_file(args.check_ours), strict=True)
        print(f"{args.check_ours}: loaded into open_clip nano with strict=True ({result})")
        return

    torch.manual_seed(0)
    model = build(PARITY_CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(2.5)
    model.eval()

    gen = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=gen)
    text_cfg = PARITY_CONFIG["text_cfg"]
    tokens = make_tokens(gen, 4, text_cfg["context_length"], text_cfg["vocab_size"])

    with torch.no_grad():
        image_features = model.encode_image(images)
        text_features = model.encode_text(tokens)
        image_normed, text_normed, logit_scale_exp = model(images, tokens)
        loss = ClipLoss()(image_normed, text_normed, logit_scale_exp)

    os.makedirs(FIXTURES, exist_ok=True)
    with open(os.path.join(FIXTURES, "model_parity_config.json"), "w") as f:
        json.dump(PARITY_CONFIG, f, indent=4)
        f.write("\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(FIXTURES, "model_parity_weights.safetensors"))
    save_file(
        {
            "images": images,
            "tokens": tokens,
            "image_features": image_features,
            "text_features": text_features,
            "image_features_normalized": image_normed,
            "text_features_normalized": text_normed,
            "logit_scale_exp": logit_scale_exp.reshape(()),
            "loss": loss.reshape(()),
        },
        os.path.join(FIXTURES, "model_parity_io.safetensors"),
    )

    nano = build(preset_to_open_clip("nano"))
    reference = {
        "open_clip_version": open_clip.__version__,
        "nano_state_dict": {k: list(v.shape) for k, v in nano.state_dict().items()},
        "nano_buffers": [n for n, _ in nano.named_buffers()],
        "param_counts": {},
    }
    del nano
    for name in PRESETS:
        m = build(preset_to_open_clip(name))
        reference["param_counts"][name] = sum(p.numel() for p in m.parameters())
        del m
    with open(os.path.join(FIXTURES, "model_reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    print(f"loss {loss.item():.6f}, logit_scale_exp {logit_scale_exp.item():.4f}")
    print("param counts", reference["param_counts"])


if __name__ == "__main__":
    main()
