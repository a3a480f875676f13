"""Benchmark shards for scripts/bench/loader: emoji PNGs upscaled and re-encoded as JPEG, or
(--source photos) random crops of real photographs re-encoded as JPEG.

Reads the 64x64 emoji PNGs installed by scripts/setup.sh (data/npm/node_modules/
emoji-datasource-{google,twitter}), composites each onto a random background colour,
upscales it (bicubic) to a random size with sides in 256..512 px, adds mild Gaussian noise
(sigma 4) so the entropy-coded data is closer to a photo's than a flat cartoon's, and
writes quality-90 4:2:0 JPEGs into webdataset tar shards (9-digit keys, .jpg + .txt
caption "an emoji of <name>") with webdataset's ShardWriter. Seeded: the same files each run.

--source photos: the two photographs scikit-learn's wheel ships (china.jpg, flower.jpg,
640x427, in .venv-ref), cropped at a random place and size at 0.8-1.25x their own
resolution to sides of 256..512 px, flipped half the time, quality-90 4:2:0 JPEG; captions
"a photo of a <name> (<index>)". Photo content has more detail per pixel than the upscaled
emoji, so its JPEGs cost more to entropy-decode (about 1.5x the bytes per image).

Run from the repository root (reference env, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/bench/loader/make_shards.py [--samples 6000]
        [--per-shard 1000] [--out data/bench/loader] [--source emoji|photos]
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


PHOTOS = ".venv-ref/lib/python3.11/site-packages/sklearn/datasets/images"


def photo_list():
    """The two photographs scikit-learn's wheel ships (sklearn.datasets.load_sample_images)."""
    names = ("china.jpg", "flower.jpg")
    return [(Image.open(os.path.join(PHOTOS, name)).convert("RGB"), name.split(".")[0]) for name in names]


def render_photo(photo, rng):
    """A random crop of a photograph at 0.8-1.25x its own resolution, sides 256..512 px."""
    width, height = rng.randint(256, 512), rng.randint(256, 512)
    scale = rng.uniform(max(0.8, width / photo.width, height / photo.height), 1.25)
    crop_w, crop_h = min(photo.width, round(width / scale)), min(photo.height, round(height / scale))
    left, top = rng.randint(0, photo.width - crop_w), rng.randint(0, photo.height - crop_h)
    out = photo.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=90, subsampling="4:2:0")
    return buf.getvalue()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--out", default="data/bench/loader")
    parser.add_argument("--source", choices=("emoji", "photos"), default="emoji")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(0)
    np_rng = np.random.default_rng(0)
    items = emoji_list() if args.source == "emoji" else photo_list()
    if not items:
        raise SystemExit(f"no emoji PNGs under {EMOJI}: run scripts/setup.sh")
    total_bytes = 0
    with wds.ShardWriter(os.path.join(args.out, "%05d.tar"), maxcount=args.per_shard, verbose=0) as sink:
        for index in range(args.samples):
            if args.source == "emoji":
                path, name, vendor = items[index % len(items)]
                jpg, caption = render(path, rng, np_rng), f"an emoji of {name} ({vendor})"
            else:
                photo, name = items[index % len(items)]
                jpg, caption = render_photo(photo, rng), f"a photo of a {name} ({index})"
            total_bytes += len(jpg)
            sink.write({"__key__": f"{index:09d}", "jpg": jpg, "txt": caption})
    print(f"wrote {args.samples} samples, {total_bytes / 1e6:.1f} MB of JPEG, to {args.out}")


if __name__ == "__main__":
    main()
