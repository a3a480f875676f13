"""Reference fixture for dataloader/src/imaging.rs's JPEG tests: PIL (libjpeg-turbo) decodes.

Takes one emoji from the npm emoji packs (data/npm/node_modules, installed by
scripts/setup.sh), puts it on a coloured background, upscales it (bicubic) to 256x192 and
saves it as a quality-85 4:2:0 JPEG. Then records what PIL decodes from that file: the
full-size pixels, and the pixels of PIL's `draft` mode at 1/2 and 1/4 scale (libjpeg's
reduced-size IDCT, what ferroclip's reduced-scale decode uses), each as a lossless PNG.

Run from the repository root (reference env, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_jpeg_fixture.py
Writes dataloader/tests/fixtures/jpeg_input.jpg, jpeg_pil_full.png, jpeg_pil_draft2.png and
jpeg_pil_draft4.png.
"""
import os

from PIL import Image

OUT = "dataloader/tests/fixtures"
EMOJI = "data/npm/node_modules/emoji-datasource-twitter/img/twitter/64/1f98a.png"  # fox face


def main():
    os.makedirs(OUT, exist_ok=True)
    emoji = Image.open(EMOJI).convert("RGBA")
    background = Image.new("RGBA", emoji.size, (40, 110, 170, 255))
    rgb = Image.alpha_composite(background, emoji).convert("RGB").resize((256, 192), Image.BICUBIC)
    jpeg_path = os.path.join(OUT, "jpeg_input.jpg")
    rgb.save(jpeg_path, format="JPEG", quality=85, subsampling="4:2:0")

    Image.open(jpeg_path).convert("RGB").save(os.path.join(OUT, "jpeg_pil_full.png"))
    for denominator in (2, 4):
        image = Image.open(jpeg_path)
        image.draft("RGB", (256 // denominator, 192 // denominator))
        assert image.size == (256 // denominator, 192 // denominator), image.size
        image.convert("RGB").save(os.path.join(OUT, f"jpeg_pil_draft{denominator}.png"))
    print("wrote", jpeg_path, "and its PIL decodes")


if __name__ == "__main__":
    main()
