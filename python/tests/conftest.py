"""Fixtures of the Python package's tests: the ferroclip binary to compare with, and real
shards made from the npm emoji packs (scripts/setup.sh installs them into data/npm)."""

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMOJI = ROOT / "data/npm/node_modules/emoji-datasource-google"


@pytest.fixture(scope="session")
def ferroclip_bin():
    """The ferroclip binary of this checkout (FERROCLIP_BIN, else target/debug/ferroclip)."""
    path = Path(os.environ.get("FERROCLIP_BIN", ROOT / "target/debug/ferroclip"))
    if not path.is_file():
        pytest.fail(f"{path}: build the binary first (cargo build --bin ferroclip)")
    return path


def run(cmd, **kwargs):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stderr}"
    return done.stdout


def emoji_rows(count):
    """`count` emoji with a Google image: (image path, caption, category)."""
    entries = json.loads((EMOJI / "emoji.json").read_text())
    rows = []
    for e in entries:
        image = EMOJI / "img/google/64" / e["image"]
        if e.get("has_img_google") and image.is_file():
            caption = f"{e['category'].lower()}: {e['name'].lower()}, {', '.join(e['short_names'])}"
            rows.append((image, caption, e["category"]))
        if len(rows) == count:
            return rows
    raise AssertionError(f"only {len(rows)} emoji images under {EMOJI}")


@pytest.fixture(scope="session")
def emoji_shards(tmp_path_factory, ferroclip_bin):
    """8 shards of 30 real emoji each, re-encoded as JPEG by `ferroclip shard` (so that
    decoding goes through libjpeg-turbo), with class labels. Returns the shard spec."""
    work = tmp_path_factory.mktemp("emoji")
    categories = {}
    with open(work / "manifest.jsonl", "w") as manifest:
        for image, caption, category in emoji_rows(240):
            label = categories.setdefault(category, len(categories))
            manifest.write(json.dumps({"image": str(image), "caption": caption, "cls": label}) + "\n")
    out = work / "shards"
    run([ferroclip_bin, "shard", "--input", work / "manifest.jsonl", "--output", out,
         "--samples-per-shard", "30", "--reencode", "jpeg:90"])
    shards = sorted(out.glob("*.tar"))
    assert len(shards) == 8, shards
    return str(out / "{00000..00007}.tar")


@pytest.fixture(scope="session")
def damaged_shard(tmp_path_factory):
    """A shard with 3 good samples, one whose image is cut short and one without a caption."""
    path = tmp_path_factory.mktemp("damaged") / "00000.tar"
    rows = emoji_rows(5)

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (image, caption, _) in enumerate(rows):
            png = image.read_bytes()
            if i == 3:
                png = png[: len(png) // 3]
            add(tar, f"{i:04}.png", png)
            if i != 4:
                add(tar, f"{i:04}.txt", caption.encode())
    return path
