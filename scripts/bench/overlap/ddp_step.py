#!/usr/bin/env python3
"""The peer of scripts/bench/overlap: open_clip's model under torch DistributedDataParallel
(gloo), whose autograd hooks all-reduce each 25 MB gradient bucket as soon as the backward
pass has filled it. One rank per process; the driver starts one in each network namespace.

    RANK=0 WORLD_SIZE=2 MASTER_ADDR=10.213.78.1 MASTER_PORT=29533 GLOO_SOCKET_IFNAME=veth0 \
        .venv-ref/bin/python scripts/bench/overlap/ddp_step.py --model ViT-B-32 --batch 16

One step: zero_grad, both towers forward, open_clip_train's ClipLoss (features gathered
from every rank, its default local_loss=False, gather_with_grad=False), backward (with DDP's
overlapped all-reduce), AdamW step. Random images and token ids, seeded per rank. Rank 0
prints one JSON line: the median step time and every timed step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import open_clip
import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    loss_fn = ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=rank, world_size=world)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    context = model.context_length
    generator = torch.Generator().manual_seed(1000 + rank)
    times = []
    dist.barrier()
    for index in range(args.warmup + args.steps):
        images = torch.randn(args.batch, 3, size, size, generator=generator)
        tokens = torch.randint(1, 40_000, (args.batch, context), generator=generator)
        tokens[:, 0] = 49406
        tokens[:, -1] = 49407
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        image_features, text_features, logit_scale = ddp(images, tokens)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        seconds = time.perf_counter() - started
        if index >= args.warmup:
            times.append(seconds)
    if rank == 0:
        print(json.dumps({
            "impl": "torch DDP (gloo)",
            "model": args.model,
            "world_size": world,
            "batch_per_worker": args.batch,
            "median_step_s": statistics.median(times),
            "step_s": times,
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        }))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
