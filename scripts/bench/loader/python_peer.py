"""The Python side of scripts/bench/loader: OpenCLIP's webdataset pipeline, and PIL decode.

  pipeline N : webdataset 1.0.2 shards -> split by DataLoader worker -> shuffle(1000) ->
               decode("pilrgb") -> open_clip's train transform (RandomResizedCrop(224,
               scale=(0.9, 1)), bicubic, ToTensor, Normalize) + open_clip's tokenizer ->
               batched(256) -> torch DataLoader with N workers; one pass over the samples.
               This is open_clip's own training data path (open_clip_train/data.py).
  raw        : one process, PIL Image.open(...).convert("RGB") of every JPEG (libjpeg-turbo),
               bytes read into memory first.
Prints one JSON line per measurement, like dataloader/examples/loader_bench.rs.

Run (run.sh does): HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/bench/loader/python_peer.py
    pipeline 2 data/bench/loader/*.tar
"""
import io
import json
import resource
import sys
import tarfile
import time

import torch
import webdataset as wds
from PIL import Image

BATCH_SIZE = 256


def peak_rss_mib():
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def cpu_seconds():
    """User + system CPU time of this process and its finished children (DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def report(name, workers, images, seconds, cpu_s):
    print(json.dumps({"name": name, "threads": workers, "images": images, "seconds": round(seconds, 3),
                      "images_per_s": round(images / seconds, 1), "cpu_s": round(cpu_s, 2),
                      "images_per_cpu_s": round(images / cpu_s, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}),
          flush=True)


def pipeline(workers, shards):
    import open_clip

    preprocess = open_clip.image_transform(224, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    dataset = wds.DataPipeline(
        wds.SimpleShardList(shards),
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        wds.shuffle(1000),
        wds.decode("pilrgb"),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda text: tokenizer(text)[0]),
        wds.to_tuple("image", "text"),
        wds.batched(BATCH_SIZE, partial=False),
    )
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                           persistent_workers=False)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    images = 0
    for image_batch, text_batch in loader:
        images += image_batch.shape[0]
    seconds = time.perf_counter() - start
    del loader  # workers exit and are reaped, so their CPU time is counted
    import gc
    gc.collect()
    report("python_webdataset_pil", workers, images, seconds, cpu_seconds() - cpu_start)


def raw(shards):
    jpegs = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    jpegs.append(tar.extractfile(member).read())
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for data in jpegs:
        Image.open(io.BytesIO(data)).convert("RGB")
    report("raw_decode_pil", 1, len(jpegs), time.perf_counter() - start, cpu_seconds() - cpu_start)


def main():
    torch.set_num_threads(1)
    mode = sys.argv[1]
    if mode == "pipeline":
        pipeline(int(sys.argv[2]), sys.argv[3:])
    elif mode == "raw":
        raw(sys.argv[2:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
