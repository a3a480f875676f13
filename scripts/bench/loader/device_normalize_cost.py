"""The normalisation the u8 loader mode (`data.normalize = "device"`) leaves to the train step,
timed on the CPU in libtorch: a 256x3x224x224 u8 batch to f32, times 1/(255*std) plus
(-mean/std) per channel, in place, as trainer::data::PixelNormalization::apply does.

Run by scripts/bench/loader/run.sh with .venv-ref's torch (the libtorch version tch links):
    .venv-ref/bin/python scripts/bench/loader/device_normalize_cost.py
Prints one JSON line per thread count: milliseconds per batch and the implied images per
CPU-second of this step alone.
"""
import json
import time

import torch

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
BATCH, SIZE, REPEATS = 256, 224, 20

scale = torch.tensor([1.0 / (255.0 * s) for s in STD], dtype=torch.float32).view(1, 3, 1, 1)
shift = torch.tensor([-m / s for m, s in zip(MEAN, STD)], dtype=torch.float32).view(1, 3, 1, 1)
images = torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8)

for threads in (1, 2):
    torch.set_num_threads(threads)
    for _ in range(3):  # warm-up: allocator and page faults
        images.to(torch.float32).mul_(scale).add_(shift)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(REPEATS):
        images.to(torch.float32).mul_(scale).add_(shift)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({
        "name": "libtorch_cpu_u8_to_f32_normalize_batch256",
        "threads": threads,
        "ms_per_batch": round(1000 * wall / REPEATS, 2),
        "cpu_ms_per_batch": round(1000 * cpu / REPEATS, 2),
        "images_per_cpu_s": round(BATCH * REPEATS / cpu, 1),
    }))
