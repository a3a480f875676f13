"""ferroclip.Loader against the Rust loader (`ferroclip data dump`), byte for byte; exact
resume through state_dict; zero-copy views; bad input; threads."""

import json
import threading
import time

import numpy as np
import pytest

import ferroclip
from conftest import run

SETTINGS = dict(batch_size=24, image_size=32, seed=5, threads=2)


def dump(ferroclip_bin, tmp_path, spec, batches, *extra):
    out = tmp_path / "dump"
    run([ferroclip_bin, "data", "dump", spec, "--out", out, "--batches", batches, *extra])
    return out


def rust_batch(out, i):
    stem = out / f"batch_{i:05}"
    meta = json.loads(stem.with_suffix(".json").read_text())
    return np.load(f"{stem}.images.npy"), np.load(f"{stem}.tokens.npy"), meta


def assert_same_batch(batch, rust):
    images, tokens, meta = rust
    assert batch.keys == meta["keys"]
    assert batch.labels == meta["labels"]
    assert batch.captions == meta["captions"]
    assert batch.epoch == meta["epoch"]
    mine = np.asarray(batch.images)
    assert mine.dtype == images.dtype and mine.shape == images.shape
    assert mine.tobytes() == images.tobytes()
    assert np.array_equal(np.asarray(batch.tokens), tokens)


@pytest.mark.parametrize(
    "python_kwargs, cli_args",
    [
        ({}, []),  # the canonical stream, float32 CLIP-normalised
        ({"normalize": "device"}, ["--normalize", "device"]),
        ({"stream": "per_rank", "rank": 1, "world_size": 2},
         ["--stream", "per_rank", "--rank", "1", "--world-size", "2"]),
        ({"rank": 1, "world_size": 2, "partitions": 4},
         ["--rank", "1", "--world-size", "2", "--partitions", "4"]),
        ({"train": False}, ["--eval"]),
    ],
    ids=["canonical", "uint8", "per_rank", "canonical_rank1of2", "eval"],
)
def test_batches_equal_the_rust_loaders(ferroclip_bin, tmp_path, emoji_shards, python_kwargs, cli_args):
    out = dump(ferroclip_bin, tmp_path, emoji_shards, 4, "--batch-size", "24", "--image-size", "32",
               "--seed", "5", "--threads", "2", *cli_args)
    loader = ferroclip.Loader(emoji_shards, **SETTINGS, **python_kwargs)
    for i in range(4):
        assert_same_batch(next(loader), rust_batch(out, i))
    # After the same batches the position is the same (the state a checkpoint would keep).
    assert loader.state_dict()["loader"] == json.loads((out / "state.json").read_text())


def test_a_different_seed_gives_different_batches(emoji_shards):
    # The negative control of the equality above: the comparison can fail.
    a = next(ferroclip.Loader(emoji_shards, **SETTINGS))
    b = next(ferroclip.Loader(emoji_shards, **{**SETTINGS, "seed": 6}))
    assert a.keys != b.keys


def test_state_dict_resumes_mid_epoch_exactly(emoji_shards):
    # 240 samples, 24 per batch: 10 batches an epoch; save after 3, compare 9 more (into
    # the next epoch).
    loader = ferroclip.Loader(emoji_shards, **SETTINGS)
    for _ in range(3):
        next(loader)
    state = loader.state_dict()
    assert state["batches_yielded"] == 3
    state = json.loads(json.dumps(state))  # plain values: it survives JSON (and torch.save)
    expected = [next(loader) for _ in range(9)]
    assert {b.epoch for b in expected} == {0, 1}

    resumed = ferroclip.Loader(emoji_shards, **SETTINGS)
    resumed.load_state_dict(state)
    assert resumed.batches_yielded == 3
    for want in expected:
        got = next(resumed)
        assert got.keys == want.keys and got.epoch == want.epoch
        assert np.asarray(got.images).tobytes() == np.asarray(want.images).tobytes()
        assert np.array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    # Proof that the state did something: a loader without it starts at batch 0.
    assert next(ferroclip.Loader(emoji_shards, **SETTINGS)).keys != expected[0].keys


def test_a_state_of_other_settings_is_refused_by_name(emoji_shards):
    loader = ferroclip.Loader(emoji_shards, **SETTINGS)
    next(loader)
    state = loader.state_dict()
    other = ferroclip.Loader(emoji_shards, **{**SETTINGS, "seed": 9})
    with pytest.raises(ferroclip.DataError, match="seed"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="format"):
        other.load_state_dict({"format": "something else"})


def test_arrays_are_views_without_a_copy(emoji_shards):
    batch = next(ferroclip.Loader(emoji_shards, **SETTINGS))
    images = batch.images
    assert images.shape == [24, 3, 32, 32] and images.dtype == "float32"
    a = np.asarray(images)
    b = np.from_dlpack(images)  # through __dlpack__
    assert a.ctypes.data == b.ctypes.data == np.asarray(batch.images).ctypes.data
    a[0, 0, 0, 0] = 1234.5
    assert b[0, 0, 0, 0] == 1234.5
    # The views keep the memory alive after the batch and the loader are gone.
    keep = np.asarray(batch.tokens).copy()
    tokens = np.from_dlpack(batch.tokens)
    del batch, images
    assert np.array_equal(tokens, keep)
    with pytest.raises(BufferError):
        a_view = ferroclip.tokenize(["x"])
        a_view.__dlpack__(copy=True)


def test_damaged_samples_are_skipped_and_counted(damaged_shard):
    loader = ferroclip.Loader(str(damaged_shard), batch_size=8, image_size=16, train=False, threads=1)
    batches = list(loader)
    assert [k for b in batches for k in b.keys] == ["0000", "0001", "0002"]
    assert loader.skip_counts == {"undecodable_image": 1, "missing_caption": 1}


def test_bad_input_raises_naming_the_shard_or_field(tmp_path, emoji_shards):
    missing = tmp_path / "nowhere" / "00003.tar"
    with pytest.raises(ferroclip.DataError, match="00003.tar"):
        ferroclip.Loader(str(missing), batch_size=4)
    with pytest.raises(ferroclip.DataError, match="batch_size"):
        ferroclip.Loader(emoji_shards, batch_size=0)
    with pytest.raises(ValueError, match="normalize"):
        ferroclip.Loader(emoji_shards, batch_size=4, normalize="gpu")
    with pytest.raises(ferroclip.DataError, match="partitions"):
        ferroclip.Loader(emoji_shards, batch_size=4, world_size=2, rank=0, partitions=3)


def test_two_threads_share_one_stream_safely(emoji_shards):
    loader = ferroclip.Loader(emoji_shards, batch_size=8, image_size=16, train=False, threads=2)
    taken = {0: [], 1: []}

    def take(me):
        for batch in loader:
            assert len(np.asarray(batch.images)) == len(batch.keys)
            taken[me].append(batch.keys)

    workers = [threading.Thread(target=take, args=(i,)) for i in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    keys = [k for batches in taken.values() for b in batches for k in b]
    assert len(keys) == 240 and len(set(keys)) == 240
    assert loader.batches_yielded == 30


def test_the_gil_is_released_while_waiting_for_a_batch(emoji_shards):
    # A large image size makes the first batch take a while; a Python thread keeps counting
    # during the wait only if next() gave the GIL up.
    loader = ferroclip.Loader(emoji_shards, batch_size=64, image_size=448, threads=1)
    ticks = 0
    stop = False

    def count():
        nonlocal ticks
        while not stop:
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.05)
    before = ticks
    started = time.perf_counter()
    next(loader)
    waited = time.perf_counter() - started
    during = ticks - before
    stop = True
    counter.join()
    assert waited > 0.05, f"the batch came too fast ({waited:.3f} s) to tell"
    assert during > 1000, f"only {during} ticks in {waited:.2f} s: next() held the GIL"


def test_the_type_stubs_list_what_the_module_has():
    # The stubs (ferroclip/_native.pyi, shipped with py.typed) name every public object of
    # the extension, and nothing it does not have.
    import ast
    from pathlib import Path

    import ferroclip._native as native

    stub = ast.parse((Path(ferroclip.__file__).parent / "_native.pyi").read_text())
    stubbed = set()
    for node in stub.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            stubbed.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            stubbed.add(node.target.id)
    public = {name for name in dir(native) if not name.startswith("_")}
    assert stubbed == public
