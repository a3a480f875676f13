"""Checks `ferroclip export` against open_clip 3.3.0: the exported folder must load
with open_clip's `local-dir:` schema (strict state_dict load) and give the same
L2-normalised embeddings as `ferroclip embed` on the same run, within 1e-4.

It writes a few RGB PNGs at the model's image size (so no resampling is involved
on either side) and a few texts, runs `ferroclip export` and `ferroclip embed`,
then encodes the same inputs with open_clip's own preprocessing and tokenizer.

Run from the repository root (reference env, no network), after `cargo build`:
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/check_export.py --run runs/NAME
Options: --ferroclip target/debug/ferroclip (the binary), --work DIR (keep the
files there instead of a temporary folder), --tolerance 1e-4.
Exit status 0 when every difference is within the tolerance.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import open_clip

TEXTS = [
    "a photo of a cat",
    "a smiling face with heart-shaped eyes",
    "red apple",
    "",
]


def write_images(folder, size, count=4, seed=0):
    """Noise, a gradient, a flat colour and a checkerboard: fixed RGB pixels."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    images = [
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], -1),
        np.full((size, size, 3), (200, 40, 90)),
        (np.indices((size, size)).sum(0) % 2 * 255)[..., None].repeat(3, -1),
    ]
    paths = []
    for i, pixels in enumerate(images[:count]):
        path = os.path.join(folder, f"input_{i}.png")
        Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB").save(path)
        paths.append(path)
    return paths


def run(cmd):
    print("$", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="run, checkpoint or checkpoints folder")
    parser.add_argument("--ferroclip", default="target/debug/ferroclip")
    parser.add_argument("--work", help="folder for the export and the inputs (default: temporary)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="check_export_")
    export_dir = os.path.join(work, "export")

    print(run([args.ferroclip, "export", "--checkpoint", args.run, "--out", export_dir]))
    with open(os.path.join(export_dir, "open_clip_config.json")) as f:
        model_cfg = json.load(f)["model_cfg"]
    image_paths = write_images(os.path.join(work, "images"), model_cfg["vision_cfg"]["image_size"])
    texts_path = os.path.join(work, "texts.txt")
    with open(texts_path, "w") as f:
        f.write("\n".join(TEXTS) + "\n")
    common = [args.ferroclip, "embed", "--checkpoint", args.run, "--device", "cpu"]
    run(common + ["--images", *image_paths, "--out", os.path.join(work, "ferroclip_images.npy")])
    run(common + ["--texts", texts_path, "--out", os.path.join(work, "ferroclip_texts.npy")])
    ours_images = torch.from_numpy(np.load(os.path.join(work, "ferroclip_images.npy")))
    ours_texts = torch.from_numpy(np.load(os.path.join(work, "ferroclip_texts.npy")))

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export_dir}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{export_dir}")
    # create_model only warns when it finds no weights: check they are the export's.
    exported = load_file(os.path.join(export_dir, "open_clip_model.safetensors"))
    state = model.state_dict()
    assert set(state) == set(exported), f"key sets differ: {set(state) ^ set(exported)}"
    assert all(torch.equal(state[k], exported[k]) for k in state), "open_clip did not load the exported weights"

    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(p)) for p in image_paths])
        theirs_images = F.normalize(model.encode_image(pixels), dim=-1)
        theirs_texts = F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1)
    image_diff = (ours_images - theirs_images).abs().max().item()
    text_diff = (ours_texts - theirs_texts).abs().max().item()
    print(f"open_clip {open_clip.__version__}, {len(state)} tensors loaded strictly from {export_dir}")
    print(f"max |ferroclip - open_clip|: image embeddings {image_diff:.3g}, text embeddings {text_diff:.3g}")
    if max(image_diff, text_diff) > args.tolerance:
        sys.exit(f"FAIL: difference above {args.tolerance}")
    print(f"OK (tolerance {args.tolerance})")


if __name__ == "__main__":
    main()
