"""ferroclip.tokenize against open_clip's ids (the committed parity corpus) and the Rust
tokenizer (`ferroclip tokenize`); ferroclip.curate against `ferroclip curate`."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import ferroclip
from conftest import ROOT, run

PARITY = ROOT / "dataloader/tests/fixtures/tokenizer_parity.jsonl"


def parity_rows():
    return [json.loads(line) for line in PARITY.read_text().splitlines()]


def test_tokenize_gives_open_clips_ids_on_the_parity_corpus():
    rows = parity_rows()
    assert len(rows) >= 1000
    ids = np.asarray(ferroclip.tokenize([r["text"] for r in rows], context_length=77))
    assert ids.shape == (len(rows), 77) and ids.dtype == np.int64
    for row, got in zip(rows, ids):
        want = row["ids"][:77]
        if len(row["ids"]) > 77:
            want = want[:76] + [49407]  # open_clip cuts and keeps <end_of_text> last
        assert list(got[: len(want)]) == want, row["text"]
        assert not got[len(want):].any()


def test_tokenize_equals_the_rust_tokenizer(ferroclip_bin):
    texts = [r["text"] for r in parity_rows() if "\n" not in r["text"] and "\r" not in r["text"]]
    stdout = run([ferroclip_bin, "tokenize", "--context-length", "77"], input="\n".join(texts) + "\n")
    rust = [json.loads(line) for line in stdout.splitlines()]
    assert len(rust) == len(texts)
    ids = np.asarray(ferroclip.tokenize(texts))
    for row, want in zip(ids, rust):
        assert list(row[: len(want)]) == want and not row[len(want):].any()
    with pytest.raises(ValueError, match="context_length"):
        ferroclip.tokenize("x", context_length=1)


CONFIG = """
[[stage]]
kind = "align"
shorter_side_above = 16
min_unigrams = 4
max_images_per_text = 2
rare_token_top_k = 400
drop_near_duplicates = false

[[stage]]
kind = "metaclip"
t = 3
seed = 11
"""


def shard_samples(spec_dir):
    """Every sample of the shards in `spec_dir`, as webdataset-style dicts, in shard order."""
    samples = []
    for shard in sorted(Path(spec_dir).glob("*.tar")):
        by_key = {}
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                by_key.setdefault(key, {"__key__": key})[ext.lower()] = tar.extractfile(member).read()
        samples.extend(by_key.values())
    return samples


def test_curation_equals_ferroclip_curate(ferroclip_bin, tmp_path, emoji_shards):
    config = tmp_path / "curate.toml"
    config.write_text(CONFIG)
    cli_out, py_out = tmp_path / "cli", tmp_path / "py"
    run([ferroclip_bin, "curate", "--config", config, "--input", emoji_shards, "--output", cli_out,
         "--threads", "2"])
    report = ferroclip.curate.curate_shards(emoji_shards, str(py_out), config=str(config), threads=2)

    cli_report = json.loads((cli_out / "report.json").read_text())
    for r in (cli_report, report):
        for key in ("seconds", "output_dir", "output_shards", "threads"):
            r.pop(key)
        for stage in r["stages"]:
            stage.pop("observe_seconds")
            stage.pop("decide_cpu_seconds")
    assert report == cli_report
    # Every stage had something to do: the comparison covers kept and dropped samples.
    align, metaclip = report["stages"]
    assert align["kept"] > 0 and sum(align["dropped"].values()) > 0
    assert metaclip["dropped"]["balanced_out"] > 0 and metaclip["kept"] > 0
    for shard in sorted(cli_out.glob("*.tar")):
        assert shard.read_bytes() == (py_out / shard.name).read_bytes(), shard.name

    # The same stages over the samples as Python dicts keep the same samples.
    samples = shard_samples(Path(emoji_shards).parent)
    results = ferroclip.curate.curate_samples(samples, toml=CONFIG)
    kept = [r["key"] for r in results if r["kept"]]
    cli_kept = [s["__key__"] for s in shard_samples(cli_out)]
    assert kept == cli_kept
    dropped = {}
    for r in results:
        if not r["kept"]:
            dropped.setdefault(r["stage"], {}).setdefault(r["reason"], 0)
            dropped[r["stage"]][r["reason"]] += 1
    assert dropped["metaclip"]["balanced_out"] == metaclip["dropped"]["balanced_out"]
    kept_sample = next(r["sample"] for r in results if r["kept"])
    assert set(kept_sample) >= {"__key__", "jpg", "txt"} and isinstance(kept_sample["jpg"], bytes)


def test_align_text_filter_decides_as_the_align_stage(emoji_shards):
    # Real images that all pass the image rules, texts per image and duplicates not limited:
    # the stage's decisions are then the text rules' alone. Captions that repeat (frequent
    # n-grams), are short, or carry a word of their own (rare at a small vocabulary).
    samples = shard_samples(Path(emoji_shards).parent)
    captions = ["cat", "a photo of a cat", "a photo of a dog", "a photo of a {}", "a cat on a mat"]
    for i, sample in enumerate(samples):
        sample["txt"] = captions[i % 5].format(f"thing{i}").encode()
    toml = """[[stage]]
kind = "align"
shorter_side_above = 16
min_unigrams = 2
rare_token_top_k = 12
max_images_per_text = 1000
drop_duplicates = false
drop_near_duplicates = false
"""
    stage = ferroclip.curate.curate_samples(samples, toml=toml)
    texts = [s["txt"].decode() for s in samples]
    rules = ferroclip.curate.align_text_filter(texts, min_unigrams=2, rare_token_top_k=12)
    assert [r.get("reason") for r in stage] == rules
    assert rules.count("rare_token") == 48 and rules.count("text_length") == 48 and rules.count(None) == 144
    with pytest.raises(ferroclip.CurateError, match="min_unigrams"):
        ferroclip.curate.align_text_filter(["a b c"], min_unigrams=5, max_unigrams=4)


def test_match_entries_equals_curate_match(ferroclip_bin):
    texts = ["A cat in New York.", "two dogs and 3 birds", "nothing matches here zzz", "a red apple"]
    stdout = run([ferroclip_bin, "curate", "match", "--metadata", "wordnet"], input="\n".join(texts) + "\n")
    assert ferroclip.curate.match_entries(texts) == [json.loads(line) for line in stdout.splitlines()]
    assert ferroclip.curate.match_entries(["A cat in New York."], ["New York", "York", "cat"]) == [
        ["New York", "York", "cat"]
    ]


def test_curation_errors_name_the_field(tmp_path):
    with pytest.raises(ferroclip.CurateError, match=r"stage\[0\]\.t"):
        ferroclip.curate.curate_samples([], toml='[[stage]]\nkind = "metaclip"\nt = 0\n')
    with pytest.raises(ValueError, match="__key__"):
        ferroclip.curate.curate_samples([{"txt": "a cat"}], toml='[[stage]]\nkind = "metaclip"\n')
    with pytest.raises(ferroclip.CurateError, match="needs a model"):
        ferroclip.curate.curate_samples([], toml='[[stage]]\nkind = "dfn"\ncheckpoint = "x"\nthreshold = 0.5\n')
    with pytest.raises(ValueError, match="exactly one"):
        ferroclip.curate.curate_samples([])
