"""Peak memory of one rank's open_clip ClipLoss (forward + backward), the peer of
ferroclip's `loss_memory` example for scripts/bench/loss_memory.

open_clip 3.3.0's `ClipLoss(local_loss=True, gather_with_grad=True, rank=0, world_size=W)`
on rank 0 of W simulated ranks: `open_clip.loss.gather_features` is replaced by one that
returns this rank's features concatenated with the other ranks' rows (made before the
measurement), keeping the local rows' autograd graph as `torch.distributed.nn.all_gather`
does. The loss then builds its (B, N) logits both ways, as on a real rank.

Measurement as on ferroclip's side: peak RSS minus RSS before the loss, the peak reset
through /proc/self/clear_refs, a fixed glibc mmap threshold set by the caller
(MALLOC_MMAP_THRESHOLD_). `--budget-gib G` caps the address space at G GiB above what the
process holds before the loss: a loss that needs more fails with an allocation error and
the line says "over_budget": true. Prints one JSON line.

    MALLOC_MMAP_THRESHOLD_=65536 .venv-ref/bin/python scripts/bench/openclip_loss_memory.py \\
        --batch 2048 --global 16384 --dim 512 --budget-gib 4
"""
import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
import open_clip
import open_clip.loss as oc_loss

from process_memory import cap_address_space, status_bytes


def simulated_gather(others_image, others_text):
    def gather_features(image_features, text_features, local_loss=False, gather_with_grad=False,
                        rank=0, world_size=1, use_horovod=False):
        assert local_loss and gather_with_grad and rank == 0
        return torch.cat([image_features, others_image]), torch.cat([text_features, others_text])
    return gather_features


def features(rows, dim):
    return F.normalize(torch.randn(rows, dim), dim=-1).requires_grad_(True)


def run(batch, global_, dim, others):
    oc_loss.gather_features = simulated_gather(*others)
    loss_fn = open_clip.loss.ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=False,
                                      rank=0, world_size=global_ // batch)
    image, text = features(batch, dim), features(batch, dim)
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    loss = loss_fn(image, text, scale)
    loss.backward()
    return loss.item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--global", dest="global_", type=int, default=16384)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--budget-gib", type=float, default=0.0)
    a = p.parse_args()
    if a.batch <= 0 or a.global_ < a.batch or a.global_ % a.batch:
        raise SystemExit(f"--global ({a.global_}) must be a positive multiple of --batch ({a.batch})")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rest = a.global_ - a.batch
    others = (F.normalize(torch.randn(rest, a.dim), dim=-1), F.normalize(torch.randn(rest, a.dim), dim=-1))
    # Warm-up on a small problem, so one-time allocations are not counted.
    run(8, 16, a.dim, (F.normalize(torch.randn(8, a.dim), dim=-1), F.normalize(torch.randn(8, a.dim), dim=-1)))
    if a.budget_gib > 0:
        cap_address_space(a.budget_gib)
    rss_before = status_bytes("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak_reset = True
    except OSError:
        peak_reset = False
    started = time.perf_counter()
    try:
        loss, over = run(a.batch, a.global_, a.dim, others), False
    except (RuntimeError, MemoryError) as e:
        if "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        loss, over = None, True
    seconds = time.perf_counter() - started
    peak = status_bytes("VmHWM") - rss_before
    print(json.dumps({
        "impl": "open_clip", "mode": "ClipLoss(local_loss=True, gather_with_grad=True)",
        "batch": a.batch, "global": a.global_, "dim": a.dim, "world_size": a.global_ // a.batch,
        "budget_gib": a.budget_gib, "over_budget": over, "peak_delta_bytes": max(peak, 0),
        "logits_bytes": 2 * a.batch * a.global_ * 4, "seconds": seconds, "peak_reset": peak_reset,
        "mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"), "loss": loss,
        "torch": torch.__version__, "open_clip": open_clip.__version__,
    }))


if __name__ == "__main__":
    main()
