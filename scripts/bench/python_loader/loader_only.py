"""ferroclip.Loader from Python, loader only: one pass over the shards, batches of 256 at
224 px (RandomResizedCrop-style train transform, normalise, tokenize), as numpy views.
Prints one JSON line with the keys of scripts/bench/loader/python_peer.py.

    .venv-ref/bin/python scripts/bench/python_loader/loader_only.py THREADS SHARD...
"""
import json
import resource
import sys
import time

import numpy as np

import ferroclip


def cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def main():
    threads, shards = int(sys.argv[1]), sys.argv[2:]
    spec = "::".join(shards)
    loader = ferroclip.Loader(spec, batch_size=256, image_size=224, threads=threads, train=True,
                              stream="per_rank", seed=0)
    wall, cpu = time.perf_counter(), cpu_seconds()
    images = 0
    # One epoch: every shard once (train mode drops each thread's last partial batch).
    epoch = None
    for batch in loader:
        if epoch is None:
            epoch = batch.epoch
        if batch.epoch != epoch:
            break
        pixels = np.asarray(batch.images)
        assert pixels.shape[1:] == (3, 224, 224)
        images += len(batch)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    print(json.dumps({"name": "ferroclip_python_loader", "threads": threads, "images": images,
                      "seconds": round(wall, 3), "images_per_s": round(images / wall, 1), "cpu_s": round(cpu, 2),
                      "images_per_cpu_s": round(images / cpu, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
          flush=True)


if __name__ == "__main__":
    main()
