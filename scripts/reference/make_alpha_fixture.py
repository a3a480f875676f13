"""Reference fixture for dataloader/tests/transform_parity.rs (how an image with transparency
becomes RGB). open_clip_train decodes webdataset images with webdataset's "pilrgb"
(`PIL.Image.open(...).convert("RGB")`) and CLIP_benchmark's transform starts with
`_convert_to_rgb` (the same call): the alpha channel is dropped, so a transparent pixel keeps
the colour stored under it. Writes three small PNGs that carry transparency in the three ways
PNG can (RGBA, grey + alpha, a palette with a tRNS chunk) and what PIL's convert("RGB") makes
of each.

Run from the repository root (needs the reference env, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_alpha_fixture.py
Writes dataloader/tests/fixtures/alpha_{rgba,la,palette}.png and alpha_expected.json
({"alpha_rgba.png": [[r, g, b], ...] row-major, ...}).
"""
import json
import os

import numpy as np
from PIL import Image

OUT = "dataloader/tests/fixtures"


def images():
    y, x = np.mgrid[0:3, 0:5]
    colour = np.stack([x * 50, y * 100, 255 - x * 40], axis=-1).astype(np.uint8)
    alpha = ((x + 2 * y) * 40 % 256).astype(np.uint8)  # 0 (fully transparent) to opaque
    rgba = Image.fromarray(np.dstack([colour, alpha]), mode="RGBA")
    la = Image.fromarray(np.dstack([colour[..., 0], alpha]), mode="LA")
    palette = Image.fromarray(colour, mode="RGB").quantize(colors=8)
    palette.info["transparency"] = bytes([0, 128] + [255] * 6)
    return {"alpha_rgba.png": rgba, "alpha_la.png": la, "alpha_palette.png": palette}


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for name, image in images().items():
        path = os.path.join(OUT, name)
        if image.mode == "P":
            image.save(path, transparency=image.info["transparency"])
        else:
            image.save(path)
        rgb = np.asarray(Image.open(path).convert("RGB"))
        expected[name] = rgb.reshape(-1, 3).tolist()
        print(name, Image.open(path).mode, Image.open(path).info.get("transparency") is not None)
    with open(os.path.join(OUT, "alpha_expected.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
