"""The peer side of scripts/bench/checkpoint: open_clip's checkpoint as OpenCLIP's
trainer writes it (torch.save of {"state_dict", "optimizer"} after an AdamW step),
plus fsync, and torch.load of it back. Prints one JSON line.

    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/bench/checkpoint_torch.py --model ViT-B-32 --threads 2 --dir /tmp/x
"""
import argparse
import json
import os
import shutil
import time

import open_clip
import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dir", default="/tmp/openclip-checkpoint-bench")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = open_clip.create_model(a.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(a.batch, 3, 224, 224)
    tokens = torch.randint(1, 1000, (a.batch, 77))
    loss_fn = open_clip.ClipLoss()
    img, txt, scale = model(images, tokens)[:3]
    loss_fn(img, txt, scale).backward()
    opt.step()

    shutil.rmtree(a.dir, ignore_errors=True)
    os.makedirs(a.dir)
    saves = []
    for i in range(2):
        path = os.path.join(a.dir, f"epoch_{i}.pt")
        start = time.perf_counter()
        torch.save({"epoch": i, "state_dict": model.state_dict(), "optimizer": opt.state_dict()}, path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        saves.append(time.perf_counter() - start)
    size = os.path.getsize(path)
    start = time.perf_counter()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(ckpt["optimizer"])
    load = time.perf_counter() - start
    shutil.rmtree(a.dir, ignore_errors=True)
    print(json.dumps({"checkpoint_bytes": size, "save_s": min(saves), "save_s_all": saves, "load_s": load}))


if __name__ == "__main__":
    main()
