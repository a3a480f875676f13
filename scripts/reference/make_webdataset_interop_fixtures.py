"""Fixtures for tests/webdataset_interop.rs: webdataset shards in both directions.

(a) Python -> ferroclip. Writes into tests/fixtures/webdataset_interop/:
  - wds_ustar-000000.tar, wds_ustar-000001.tar: `webdataset.ShardWriter` (1.0.2) with its
    defaults (USTAR headers, maxcount=3 so 5 samples make two shards);
  - wds_pax-000000.tar: `webdataset.ShardWriter(..., format="PAX_FORMAT")`, with keys that
    need PAX extended headers (a directory path longer than 100 bytes, non-ASCII keys);
  - img2dataset-00000.tar: img2dataset's layout (9-digit keys `shard * 10^4 + index`,
    `.jpg/.txt/.json` members, the JSON with url/caption/key/status/width/height);
  - python_written.json: per shard, the samples as written (key, captions, image
    width/height, label), which the Rust test checks ferroclip's loader against.
(b) ferroclip -> Python. When ferroclip_written.tar exists (written by the Rust test with
    FERROCLIP_UPDATE_FIXTURES=1, see below), reads it with `webdataset.WebDataset` and writes
    ferroclip_written.read_by_webdataset.json: sha256 of the file and, per sample, the key,
    member extensions, captions (.txt lines), label (.cls) and image size (PIL).

Images are small synthetic PNG/JPEGs made here plus one 64x64 emoji PNG from
data/npm/node_modules (installed by scripts/setup.sh) when present. Everything written is
deterministic (fixed mtime, fixed pixels).

Run from the repository root (reference env, no network):
    FERROCLIP_UPDATE_FIXTURES=1 cargo test --test webdataset_interop   # (re)writes ferroclip_written.tar
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_webdataset_interop_fixtures.py
    cargo test --test webdataset_interop                                # checks both directions
"""
import hashlib
import io
import json
import os
import sys

import webdataset as wds
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "webdataset_interop")
EMOJI = os.path.join(
    ROOT, "data", "npm", "node_modules", "emoji-datasource-google", "img", "google", "64", "1f431.png"
)
MTIME = 1_700_000_000


def synthetic(width, height, fmt, shade):
    """A small gradient image encoded as `fmt` (PNG or JPEG)."""
    img = Image.new("RGB", (width, height))
    img.putdata([((x * 7 + shade) % 256, (y * 11) % 256, shade) for y in range(height) for x in range(width)])
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return buf.getvalue()


def image_size(data):
    with Image.open(io.BytesIO(data)) as img:
        return list(img.size)


def expected(key, ext, image, captions, label=None):
    return {"key": key, "image_ext": ext, "width": image_size(image)[0], "height": image_size(image)[1],
            "captions": captions, "label": label}


def write_shardwriter(pattern, samples, **kw):
    """Write `samples` ({"__key__", ext: bytes/str, ...}) with webdataset's ShardWriter."""
    with wds.ShardWriter(pattern, maxcount=3, verbose=0, mtime=MTIME, **kw) as sink:
        for sample in samples:
            sink.write(sample)


def python_to_ferroclip():
    written = {}

    # Default ShardWriter: USTAR headers, two shards.
    ustar = []
    exp = []
    for i in range(5):
        ext = "jpg" if i % 2 == 0 else "png"
        image = synthetic(16 + 4 * i, 10 + 2 * i, "JPEG" if ext == "jpg" else "PNG", 40 * i)
        key = f"sample{i:04d}"
        caption = f"a gradient number {i}"
        ustar.append({"__key__": key, ext: image, "txt": caption, "cls": str(i)})
        exp.append(expected(key, ext, image, [caption], i))
    write_shardwriter(os.path.join(OUT, "wds_ustar-%06d.tar"), ustar)
    written["wds_ustar-000000.tar"] = exp[:3]
    written["wds_ustar-000001.tar"] = exp[3:]

    # PAX headers: a long directory path and non-ASCII keys do not fit USTAR.
    long_dir = "/".join(["a_rather_long_directory_name_%02d" % d for d in range(4)])
    pax_samples = [
        (f"{long_dir}/photo_0001", "png", synthetic(24, 18, "PNG", 5), "two lines\nof captions"),
        ("café/ünïcødé_key", "jpg", synthetic(30, 20, "JPEG", 99), "un café crème, s'il vous plaît"),
    ]
    if os.path.exists(EMOJI):
        with open(EMOJI, "rb") as f:
            pax_samples.append(("emoji/1f431", "png", f.read(), "cat face 🐱"))
    pax = []
    exp = []
    for key, ext, image, text in pax_samples:
        pax.append({"__key__": key, ext: image, "txt": text, "json": json.dumps({"caption": text})})
        captions = [line.strip() for line in text.splitlines() if line.strip()]
        exp.append(expected(key, ext, image, captions))
    write_shardwriter(os.path.join(OUT, "wds_pax-%06d.tar"), pax, format="PAX_FORMAT")
    written["wds_pax-000000.tar"] = exp

    # img2dataset layout: shard 0, 10^4 samples per shard -> keys 000000000, 000000001, ...
    exp = []
    with wds.TarWriter(os.path.join(OUT, "img2dataset-00000.tar"), mtime=MTIME) as sink:
        for index in range(4):
            key = f"{index:09d}"
            image = synthetic(20 + 6 * index, 14 + index, "JPEG", 60 * index)
            width, height = image_size(image)
            caption = f"img2dataset caption {index}"
            meta = {"url": f"https://example.com/{index}.jpg", "caption": caption, "key": key,
                    "status": "success", "error_message": None, "width": width, "height": height,
                    "original_width": width * 2, "original_height": height * 2}
            sink.write({"__key__": key, "jpg": image, "txt": caption, "json": json.dumps(meta)})
            exp.append(expected(key, "jpg", image, [caption]))
    written["img2dataset-00000.tar"] = exp

    with open(os.path.join(OUT, "python_written.json"), "w") as f:
        json.dump(written, f, indent=1, ensure_ascii=False)
        f.write("\n")


def ferroclip_to_python():
    shard = os.path.join(OUT, "ferroclip_written.tar")
    if not os.path.exists(shard):
        print(f"{shard} missing: run `FERROCLIP_UPDATE_FIXTURES=1 cargo test --test webdataset_interop` first",
              file=sys.stderr)
        return False
    with open(shard, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    samples = []
    for sample in wds.WebDataset(shard, shardshuffle=False):
        exts = sorted(k for k in sample if not k.startswith("__"))
        image_ext = next(e for e in ("jpg", "png", "jpeg", "webp") if e in sample)
        text = sample["txt"].decode("utf-8") if "txt" in sample else None
        samples.append({
            "key": sample["__key__"],
            "members": exts,
            "captions": [line.strip() for line in text.splitlines() if line.strip()] if text is not None else [],
            "label": int(sample["cls"].decode()) if "cls" in sample else None,
            "json": json.loads(sample["json"]) if "json" in sample else None,
            "image_ext": image_ext,
            "image_size": image_size(sample[image_ext]),
        })
    with open(os.path.join(OUT, "ferroclip_written.read_by_webdataset.json"), "w") as f:
        json.dump({"webdataset_version": wds.__version__ if hasattr(wds, "__version__") else "1.0.2",
                   "sha256": digest, "samples": samples}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return True


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    python_to_ferroclip()
    sys.exit(0 if ferroclip_to_python() else 1)
