"""Reference MAC counts for trainer/src/macs.rs, measured rather than derived.

Builds open_clip 3.3.0's `CLIP` for each model config in configs/models/ (nano, tiny,
vit-b-32 and the demo sweep's sweep-xs/sweep-s), runs one forward pass of one image
and one full-length text (context_length tokens) under torch's FlopCounterMode, and
records the counted FLOPs of each tower (FlopCounterMode counts 2 FLOPs per
multiply-accumulate of every matmul, linear, conv and attention kernel; LayerNorm,
GELU, softmax and additions are not counted, which is the convention ferroclip's
count follows too).

Run from the repository root (needs the reference env, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_macs_fixture.py

Writes trainer/tests/fixtures/macs_reference.json:
    {"<model>": {"image_flops": int, "text_flops": int}, ...}
"""
import json
import tomllib
from pathlib import Path

import torch
from open_clip.model import CLIP
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count


# torch counts the CUDA attention kernels but not the CPU one that
# nn.MultiheadAttention reaches here; count it with torch's own attention formula
# (both products Q·Kᵀ and A·V in full, also under a causal mask).
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)

MODELS = ["nano", "tiny", "vit-b-32", "sweep-xs", "sweep-s"]


def open_clip_cfg(cfg):
    v, t = cfg["vision"], cfg["text"]
    vision = dict(
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        width=v["width"],
        layers=v["layers"],
        head_width=v.get("head_width", 64),
        mlp_ratio=v.get("mlp_ratio", 4.0),
    )
    text = dict(
        context_length=t.get("context_length", 77),
        vocab_size=t.get("vocab_size", 49408),
        width=t["width"],
        heads=t["heads"],
        layers=t["layers"],
        mlp_ratio=t.get("mlp_ratio", 4.0),
    )
    return cfg["embed_dim"], vision, text


def count(fn):
    # nn.MultiheadAttention's inference fast path is one fused kernel that
    # FlopCounterMode does not count; the regular path runs the projections and
    # the attention as ops it does count.
    torch.backends.mha.set_fastpath_enabled(False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    for op, flops in counter.get_flop_counts()["Global"].items():
        print("   ", op, flops)
    return counter.get_total_flops()


def main():
    out = {}
    for name in MODELS:
        cfg = tomllib.loads(Path(f"configs/models/{name}.toml").read_text())
        embed_dim, vision, text = open_clip_cfg(cfg)
        model = CLIP(embed_dim, vision, text).eval()
        image = torch.randn(1, 3, vision["image_size"], vision["image_size"])
        tokens = torch.randint(1, 1000, (1, text["context_length"]))
        tokens[0, -1] = text["vocab_size"] - 1  # the end-of-text token: the row's largest id
        out[name] = {
            "image_flops": count(lambda: model.encode_image(image)),
            "text_flops": count(lambda: model.encode_text(tokens)),
        }
        print(name, out[name])
    path = Path("trainer/tests/fixtures/macs_reference.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
