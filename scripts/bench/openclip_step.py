#!/usr/bin/env python3
"""Time open_clip's CLIP training step (CPU, or one GPU with --device cuda): the Python side of
scripts/bench/step_time and scripts/gpu_check.sh.

Run with the reference env (never in CI):

    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/bench/openclip_step.py \
        --model tiny --batch 32 --threads 1 --warmup 2 --steps 20

One step = zero_grad, forward of both towers, ClipLoss, backward, AdamW step and the
logit-scale clamp, as open_clip_train runs it in fp32. Inputs are random images and
random token ids (start token, random body, end token, zero padding), fixed by --seed.
Prints one JSON line:
{"impl": "open_clip", "model", "threads", "batch", "median_step_s", "min_step_s",
 "peak_rss_mib", ...}; ferroclip's `step_time` example prints the same keys. With --device cuda
each step ends with torch.cuda.synchronize() and the line adds "samples_per_s",
"peak_cuda_allocated_mib" and "peak_cuda_reserved_mib" (the caching allocator's peaks).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import open_clip
from open_clip.loss import ClipLoss
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

START_OF_TEXT = 49406
END_OF_TEXT = 49407

# Optimizer settings of the peer runs (notes/peer-baselines.md), open_clip_train's defaults for ViT.
LEARNING_RATE = 5e-4
BETAS = (0.9, 0.98)
EPS = 1e-6
WEIGHT_DECAY = 0.2


def build_model(name: str) -> torch.nn.Module:
    if name == "tiny":
        # ferroclip's configs/models/tiny: embed 128, ViT 64 px / patch 8 / 4 layers / width 128
        # (head width 64 -> 2 heads), text ctx 32 / 4 layers / width 128 / 2 heads.
        vision = CLIPVisionCfg(image_size=64, patch_size=8, layers=4, width=128)
        text = CLIPTextCfg(context_length=32, vocab_size=49408, width=128, heads=2, layers=4)
        return CLIP(embed_dim=128, vision_cfg=vision, text_cfg=text)
    if name in ("vit-b-32", "vit-b-16"):
        return open_clip.create_model(name.replace("vit-b", "ViT-B"))
    raise ValueError(f"--model: unknown model {name!r} (tiny | vit-b-32 | vit-b-16)")


def adamw_like_open_clip_train(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Weight decay only on weight matrices/embeddings: not on gains, biases, norms or logit_scale."""
    decayed, not_decayed = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_gain_or_bias = (param.ndim < 2 or "bias" in name or "logit_scale" in name
                           or "ln" in name or "bn" in name)
        (not_decayed if is_gain_or_bias else decayed).append(param)
    groups = [{"params": not_decayed, "weight_decay": 0.0},
              {"params": decayed, "weight_decay": WEIGHT_DECAY}]
    return torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS, eps=EPS)


def random_batch(batch: int, image_size: int, context_length: int, vocab_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    tokens = torch.zeros(batch, context_length, dtype=torch.long)
    lengths = torch.randint(1, context_length - 1, (batch,), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        # Body ids stay below START_OF_TEXT so that END_OF_TEXT is the row's argmax (the pooled token).
        tokens[row, 0] = START_OF_TEXT
        tokens[row, 1:1 + length] = torch.randint(1, min(START_OF_TEXT, vocab_size), (length,),
                                                  generator=generator)
        tokens[row, 1 + length] = END_OF_TEXT
    return images, tokens


def image_size_of(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def main() -> int:
    parser = argparse.ArgumentParser(description="time open_clip's CLIP training step")
    parser.add_argument("--model", choices=["tiny", "vit-b-32", "vit-b-16"], required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: forward and loss under torch.autocast(bfloat16), as "
                             "open_clip_train's --precision amp_bf16")
    args = parser.parse_args()
    if args.batch < 1 or args.threads < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch, --threads and --steps must be >= 1, --warmup >= 0")

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.model).to(device)
    model.train()
    optimizer = adamw_like_open_clip_train(model)
    loss_fn = ClipLoss()  # world of one: no gather, labels arange(B)
    generator = torch.Generator().manual_seed(args.seed)
    images, tokens = random_batch(args.batch, image_size_of(model), model.context_length,
                                  model.vocab_size, generator)
    images, tokens = images.to(device), tokens.to(device)

    step_seconds = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            image_features, text_features, logit_scale = model(images, tokens)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # open_clip_train keeps the temperature at most 100
            model.logit_scale.clamp_(0, math.log(100))
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are asynchronous: time the step to its end
        elapsed = time.perf_counter() - start
        if not math.isfinite(loss.item()):
            print(f"error: loss is {loss.item()} at step {step}", file=sys.stderr)
            return 1
        if step >= args.warmup:
            step_seconds.append(elapsed)

    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    median_step = statistics.median(step_seconds)
    extra = {}
    if device.type == "cuda":
        extra = {
            "device": str(device),
            "samples_per_s": round(args.batch / median_step, 2),
            "peak_cuda_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "peak_cuda_reserved_mib": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
            "gpu": torch.cuda.get_device_name(device),
        }
    print(json.dumps({
        "impl": "open_clip",
        "model": args.model,
        "threads": args.threads,
        "precision": args.precision,
        "batch": args.batch,
        "median_step_s": round(statistics.median(step_seconds), 6),
        "min_step_s": round(min(step_seconds), 6),
        "peak_rss_mib": round(peak_rss_kib / 1024, 1),
        "steps": args.steps,
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        **extra,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
