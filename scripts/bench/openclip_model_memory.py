"""Peak memory and time of open_clip training steps with and without activation
checkpointing, the peer of ferroclip's `max_batch` example in scripts/bench/model_memory.

open_clip 3.3.0's CLIP from its own model config (`--model ViT-B-32`), `set_grad_checkpointing`
as open_clip_train's `--grad-checkpointing` sets it, ClipLoss, AdamW (torch's default
implementation), gradient clipping, fp32, random images and captions. Steps after the first
are measured: peak RSS during the step over the RSS before it (the step's own memory:
activations and gradients; the model and the optimizer's moments exist by then), and time.

    MALLOC_MMAP_THRESHOLD_=65536 .venv-ref/bin/python scripts/bench/openclip_model_memory.py \\
        --model ViT-B-32 --batch 32 --steps 3 [--grad-checkpointing] [--budget-gib 18]
"""
import argparse
import json
import time

import torch
import open_clip
from open_clip.factory import get_model_config
from open_clip.model import CLIP

from process_memory import cap_address_space, reset_peak, status_bytes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--budget-gib", type=float, default=0.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = get_model_config(a.model)
    image_size, context = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    torch.ones(8, 8) @ torch.ones(8, 8)
    if a.budget_gib > 0:
        cap_address_space(a.budget_gib)
    rss_start = status_bytes("VmRSS")
    reset_peak()
    seconds, step_peaks, run_hwm, over = [], [], 0, False
    try:
        model = CLIP(**cfg, output_dict=True)
        model.set_grad_checkpointing(a.grad_checkpointing)
        model.train()
        loss = open_clip.loss.ClipLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
        for index in range(a.steps):
            if index > 0:
                run_hwm = max(run_hwm, status_bytes("VmHWM"))
                before = status_bytes("VmRSS")
                reset_peak()
            images = torch.randn(a.batch, 3, image_size, image_size)
            words = torch.randint(1, 40000, (a.batch, context - 2))
            texts = torch.cat([torch.full((a.batch, 1), 49406), words, torch.full((a.batch, 1), 49407)], 1)
            t = time.perf_counter()
            total = loss(**model(images, texts))
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            # Gradients freed at the end of the step, as ferroclip's step does: both sides'
            # step peaks then count activations plus the gradients' allocation alike.
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - t)
            if index > 0:
                step_peaks.append(status_bytes("VmHWM") - before)
    except (RuntimeError, MemoryError) as e:
        if "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        over = True
    timed = seconds[1:] or seconds
    print(json.dumps({
        "impl": "open_clip", "model": a.model, "batch": a.batch, "threads": a.threads,
        "grad_checkpointing": a.grad_checkpointing, "budget_gib": a.budget_gib, "over_budget": over,
        "peak_delta_bytes": max(run_hwm, status_bytes("VmHWM")) - rss_start,
        "step_peak_delta_bytes": max(step_peaks) if step_peaks else None,
        "step_seconds": None if over or not timed else sum(timed) / len(timed),
        "steps_run": len(seconds), "torch": torch.__version__, "open_clip": open_clip.__version__,
    }))


if __name__ == "__main__":
    main()
