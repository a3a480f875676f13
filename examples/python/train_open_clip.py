#!/usr/bin/env python3
"""open_clip's model and loss trained in a plain PyTorch loop, fed by ferroclip's Loader
(or, for comparison, by open_clip's own webdataset pipeline).

    .venv-ref/bin/python examples/python/train_open_clip.py --shards 'data/x/{00000..00009}.tar' \
        --model tiny --batch-size 64 --steps 50 --workers 2 [--loader ferroclip|open_clip]

Needs torch and open_clip (.venv-ref has them) and the ferroclip wheel
(`pip install target/wheels/ferroclip-*.whl`, built by scripts/setup.sh). The batches come
from Rust threads: images and token ids reach torch through DLPack without a copy. With
`--normalize device` the loader hands over uint8 pixels and the normalisation runs in
torch (on the GPU when there is one: a quarter of the bytes to move).

The loop saves `state_dict()` of the loader with each checkpoint (`--save-every`) and
continues from it with `--resume`, at the very batch where it stopped.

Prints one JSON line per `--log-every` steps and a summary: step time, the share of it
spent waiting for data, samples/s, and the process's CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import open_clip
from open_clip.loss import ClipLoss
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

import ferroclip


def build_model(name: str) -> CLIP:
    if name == "tiny":
        # ferroclip's configs/models/tiny: ViT 64 px / patch 8 / 4 layers / width 128,
        # text ctx 32 / 4 layers / width 128, embed 128.
        vision = CLIPVisionCfg(image_size=64, patch_size=8, layers=4, width=128)
        text = CLIPTextCfg(context_length=32, vocab_size=49408, width=128, heads=2, layers=4)
        return CLIP(embed_dim=128, vision_cfg=vision, text_cfg=text)
    return open_clip.create_model(name)


def cpu_seconds() -> float:
    """CPU seconds of this process and its live children (DataLoader workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick  # ppid, utime + stime

    me = os.getpid()
    total = stat(me)[1]
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                ppid, seconds = stat(entry)
            except OSError:
                continue
            if ppid == me:
                total += seconds
    return total


def ferroclip_batches(args, image_size: int, context_length: int, device: torch.device):
    loader = ferroclip.Loader(
        args.shards, batch_size=args.batch_size, image_size=image_size, context_length=context_length,
        threads=args.workers, seed=args.seed, normalize=args.normalize,
    )
    if args.resume:
        saved = torch.load(args.resume, weights_only=False)
        loader.load_state_dict(saved["loader"])
    mean = torch.tensor(ferroclip.CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(ferroclip.CLIP_STD, device=device).view(1, 3, 1, 1)
    for batch in loader:
        images = torch.from_dlpack(batch.images).to(device, non_blocking=True)
        if args.normalize == "device":
            images = (images.float() / 255.0 - mean) / std
        tokens = torch.from_dlpack(batch.tokens).to(device, non_blocking=True)
        yield images, tokens, loader


def open_clip_batches(args, model, context_length: int, device: torch.device):
    import argparse as ap
    import open_clip_train.data as open_clip_data
    from open_clip_train.data import get_wds_dataset

    # webdataset 1.0.2 yields an empty dict at the end of each tar, which open_clip_train
    # 3.3.0's group_by_keys_nothrow cannot read (KeyError: 'fname'); drop those first.
    expand = open_clip_data.tar_file_expander
    open_clip_data.tar_file_expander = lambda *a, **k: (s for s in expand(*a, **k) if s)

    preprocess = open_clip.image_transform(model.visual.image_size, is_train=True)
    tokenizer = lambda texts: open_clip.tokenize(texts, context_length=context_length)  # noqa: E731
    wds_args = ap.Namespace(
        train_data=args.shards, train_num_samples=args.num_samples, train_data_upsampling_factors=None,
        batch_size=args.batch_size, workers=args.workers, world_size=1, seed=args.seed,
        dataset_resampled=False,
    )
    data = get_wds_dataset(wds_args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    epoch = 0
    while True:
        data.set_epoch(epoch)
        epoch += 1
        for images, tokens in data.dataloader:
            yield images.to(device, non_blocking=True), tokens.to(device, non_blocking=True), None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", required=True, help="webdataset shard spec (brace ranges)")
    p.add_argument("--model", default="tiny", help="tiny, or an open_clip model name")
    p.add_argument("--loader", choices=["ferroclip", "open_clip"], default="ferroclip")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--workers", type=int, default=2, help="loader threads (ferroclip) or processes (open_clip)")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--normalize", choices=["loader", "device"], default="loader")
    p.add_argument("--num-samples", type=int, default=6000, help="open_clip: --train-num-samples")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=0, help="write checkpoint.pt every N steps (0: never)")
    p.add_argument("--resume", help="a checkpoint.pt to continue from (model, optimizer, loader)")
    p.add_argument("--out", default="checkpoint.pt")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(args.model).to(device)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    context_length = model.context_length
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    loss_fn = ClipLoss()
    step = 0
    if args.resume:
        saved = torch.load(args.resume, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step = saved["step"]

    if args.loader == "ferroclip":
        batches = ferroclip_batches(args, image_size, context_length, device)
    else:
        batches = open_clip_batches(args, model, context_length, device)

    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    data_wait = step_time = 0.0
    timed_steps = 0
    while step < args.steps:
        t0 = time.perf_counter()
        images, tokens, loader = next(batches)
        t1 = time.perf_counter()
        image_features, text_features, logit_scale = model(images, tokens)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        step += 1
        if timed_steps or step > 2:  # the first two steps warm up threads and allocators
            data_wait += t1 - t0
            step_time += t2 - t0
            timed_steps += 1
        if step % args.log_every == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "data_wait_s": round(t1 - t0, 4),
                              "step_s": round(t2 - t0, 4)}), flush=True)
        if args.save_every and step % args.save_every == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "loader": loader.state_dict() if loader is not None else None}, args.out)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    print(json.dumps({
        "summary": True, "loader": args.loader, "model": args.model, "batch_size": args.batch_size,
        "workers": args.workers, "steps": timed_steps,
        "mean_step_s": round(step_time / max(timed_steps, 1), 4),
        "data_wait_frac": round(data_wait / max(step_time, 1e-9), 4),
        "samples_per_s": round(timed_steps * args.batch_size / max(step_time, 1e-9), 1),
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
    }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
