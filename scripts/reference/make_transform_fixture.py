"""Reference fixture for dataloader/tests/transform_parity.rs (open_clip's eval image transform).

Builds a small deterministic RGB test image (smooth gradients plus sharp edges, 37x23, so
both the resize filter and the center-crop offsets matter), saves it as PNG, and runs
open_clip 3.3.0's `image_transform(16, is_train=False)` (bicubic shorter-side resize, center
crop, CLIP mean/std) on it. The train transform draws from torch's RNG, which ferroclip
does not reproduce, so only the eval transform has a fixture.

Run from the repository root (needs the reference env, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_transform_fixture.py
Writes dataloader/tests/fixtures/transform_input.png and
dataloader/tests/fixtures/transform_eval16.json ({"size": 16, "chw": [...]}).
"""
import json
import os

import numpy as np
from PIL import Image

from open_clip.transform import image_transform

OUT = "dataloader/tests/fixtures"


def test_image(width=37, height=23):
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // (width - 1)).astype(np.uint8)
    g = (y * 255 // (height - 1)).astype(np.uint8)
    b = np.where(((x // 5) + (y // 4)) % 2 == 0, 230, 20).astype(np.uint8)
    return Image.fromarray(np.stack([r, g, b], axis=-1), mode="RGB")


def main():
    os.makedirs(OUT, exist_ok=True)
    image = test_image()
    png_path = os.path.join(OUT, "transform_input.png")
    image.save(png_path)
    # Re-read the PNG, as the Rust side does.
    image = Image.open(png_path).convert("RGB")
    transform = image_transform(16, is_train=False)
    chw = transform(image)
    assert tuple(chw.shape) == (3, 16, 16)
    with open(os.path.join(OUT, "transform_eval16.json"), "w") as f:
        json.dump({"size": 16, "chw": [round(float(v), 6) for v in chw.flatten()]}, f)
    print("wrote", png_path, "and transform_eval16.json")


if __name__ == "__main__":
    main()
