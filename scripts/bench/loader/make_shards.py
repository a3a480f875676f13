"""Benchmark shards for scripts/bench/loader: emoji PNGs upscaled and re-encoded as JPEG.

Reads the 64x64 emoji PNGs installed by scripts/setup.sh (data/npm/node_modules/
emoji-datasource-{google,twitter}), composites each onto a random background colour,
upscales it (bicubic) to a random size with sides in 256..512 px, adds mild Gaussian noise
(sigma 4) so the entropy-coded data is closer to a photo's than a flat cartoon's, and
writes quality-90 4:2:0 JPEGs into webdataset tar shards (9-digit keys, .jpg + .txt
caption "an emoji of <name>") with webdataset's ShardWriter. Seeded: the same files each run.

Run from the repository root (reference env, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/bench/loader/make_shards.py [--samples 6000]
        [--per-shard 1000] [--out data/bench/loader]
"""
import argparse
import io
import json
import os
import random

import numpy as np
import webdataset as wds
from PIL import Image

EMOJI = "data/npm/node_modules"


def emoji_list():
    items = []
    for vendor in ("google", "twitter"):
        meta = json.load(open(os.path.join(EMOJI, f"emoji-datasource-{vendor}", "emoji.json")))
        folder = os.path.join(EMOJI, f"emoji-datasource-{vendor}", "img", vendor, "64")
        for entry in meta:
            path = os.path.join(folder, entry["image"])
            if entry.get(f"has_img_{vendor}") and os.path.exists(path):
                name = (entry.get("name") or entry["short_name"]).lower()
                items.append((path, name, vendor))
    return items


def render(path, rng, np_rng):
    emoji = Image.open(path).convert("RGBA")
    background = Image.new("RGBA", emoji.size, tuple(rng.randrange(256) for _ in range(3)) + (255,))
    rgb = Image.alpha_composite(background, emoji).convert("RGB")
    width, height = rng.randint(256, 512), rng.randint(256, 512)
    big = np.asarray(rgb.resize((width, height), Image.BICUBIC), dtype=np.float32)
    big += np_rng.normal(0.0, 4.0, big.shape).astype(np.float32)
    out = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8), mode="RGB")
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=90, subsampling="4:2:0")
    return buf.getvalue()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--out", default="data/bench/loader")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(0)
    np_rng = np.random.default_rng(0)
    items = emoji_list()
    if not items:
        raise SystemExit(f"no emoji PNGs under {EMOJI}: run scripts/setup.sh")
    total_bytes = 0
    with wds.ShardWriter(os.path.join(args.out, "%05d.tar"), maxcount=args.per_shard, verbose=0) as sink:
        for index in range(args.samples):
            path, name, vendor = items[index % len(items)]
            jpg = render(path, rng, np_rng)
            total_bytes += len(jpg)
            sink.write({"__key__": f"{index:09d}", "jpg": jpg, "txt": f"an emoji of {name} ({vendor})"})
    print(f"wrote {args.samples} samples, {total_bytes / 1e6:.1f} MB of JPEG, to {args.out}")


if __name__ == "__main__":
    main()
