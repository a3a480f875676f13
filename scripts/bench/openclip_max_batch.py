"""Real open_clip training steps at a chosen global batch inside a memory budget, the peer of
ferroclip's `max_batch` example for scripts/bench/max_batch.

The step is open_clip_train's (3.3.0, `train_one_epoch`) with `--accum-freq K`, as written
there: pass 1 runs the model under no_grad on every micro-batch and caches the features and
the micro-batches; pass 2 runs each micro-batch again and computes the loss over all K·B
cached features with that micro-batch's features graph-connected, and backpropagates, K
times; then gradient clipping and AdamW. ClipLoss in a world of one (local_loss has no
effect there). The model is built from the JSON config ferroclip's example prints, so both
sides train the same architecture. Images are float32 batches, as open_clip's data loader
delivers them.

    MALLOC_MMAP_THRESHOLD_=65536 .venv-ref/bin/python scripts/bench/openclip_max_batch.py \\
        --config model.json --micro 256 --accum 8 --budget-gib 4 --steps 2
"""
import argparse
import json
import os
import time

import torch
import open_clip
from open_clip.model import CLIP

from process_memory import cap_address_space, reset_peak, status_bytes


def micro_batch(rows, image_size, context):
    images = torch.randn(rows, 3, image_size, image_size)
    words = torch.randint(1, 40000, (rows, context - 2))
    texts = torch.cat([torch.full((rows, 1), 49406), words, torch.full((rows, 1), 49407)], 1)
    return images, texts


def step(model, loss, optimizer, accum, micro, image_size, context):
    """One optimizer step of open_clip_train's accum_freq path (train.py, train_one_epoch)."""
    accum_images, accum_texts, accum_features = [], [], {}
    for _ in range(accum):
        images, texts = micro_batch(micro, image_size, context)
        with torch.no_grad():
            model_out = model(images, texts)
            for f in ("logit_scale", "logit_bias"):
                model_out.pop(f, None)
            for key, val in model_out.items():
                accum_features.setdefault(key, []).append(val)
        accum_images.append(images)
        accum_texts.append(texts)
    optimizer.zero_grad()
    for j in range(accum):
        model_out = model(accum_images[j], accum_texts[j])
        inputs_no_accum = {"logit_scale": model_out.pop("logit_scale")}
        if "logit_bias" in model_out:
            inputs_no_accum["logit_bias"] = model_out.pop("logit_bias")
        inputs = {}
        for key, accumulated in accum_features.items():
            inputs[key] = torch.cat(accumulated[:j] + [model_out[key]] + accumulated[j + 1:])
        losses = loss(**inputs, **inputs_no_accum, output_dict=True)
        del inputs, inputs_no_accum
        total = sum(losses.values())
        total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=2.0)
    optimizer.step()
    return total.item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="open_clip model config JSON")
    p.add_argument("--micro", type=int, default=256)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--budget-gib", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = json.load(open(a.config))
    image_size, context = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    torch.ones(8, 8) @ torch.ones(8, 8)
    if a.budget_gib > 0:
        cap_address_space(a.budget_gib)
    rss_before = status_bytes("VmRSS")
    reset_peak()
    started = time.perf_counter()
    seconds, loss_value, over = [], None, False
    try:
        model = CLIP(**cfg, output_dict=True)
        model.train()
        loss = open_clip.loss.ClipLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
        for _ in range(a.steps):
            t = time.perf_counter()
            loss_value = step(model, loss, optimizer, a.accum, a.micro, image_size, context)
            seconds.append(time.perf_counter() - t)
    except (RuntimeError, MemoryError) as e:
        if "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        over = True
    peak = status_bytes("VmHWM") - rss_before
    timed = seconds[1:] or seconds
    step_s = None if over or not timed else sum(timed) / len(timed)
    global_batch = a.micro * a.accum
    print(json.dumps({
        "impl": "open_clip", "global_batch": global_batch, "micro_batch": a.micro, "accum": a.accum,
        "threads": a.threads, "budget_gib": a.budget_gib, "over_budget": over,
        "peak_delta_bytes": max(peak, 0), "steps_run": len(seconds), "step_seconds": step_s,
        "samples_per_s": None if step_s is None else global_batch / step_s,
        "wall_seconds": time.perf_counter() - started, "loss": loss_value,
        "torch": torch.__version__, "open_clip": open_clip.__version__,
    }))


if __name__ == "__main__":
    main()
