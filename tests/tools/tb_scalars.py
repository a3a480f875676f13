"""Reads a folder of TensorBoard event files with tensorboard's own reader and prints
its scalars as JSON: {"tag": [[step, value], ...]}. NaN and infinities are written as
the strings "nan", "inf", "-inf" (JSON has no such numbers).

Used by the Rust tests (tests/cli_tensorboard.rs, trainer/tests/tensorboard_events.rs)
through .venv/bin/python, where scripts/setup.sh installs tensorboard.
"""
import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def number(x):
    return x if math.isfinite(x) else str(x)


def main(folder):
    # size_guidance 0: keep every scalar (the default samples 10 000 per tag).
    acc = EventAccumulator(folder, size_guidance={"scalars": 0})
    acc.Reload()
    out = {
        tag: [[e.step, number(e.value)] for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }
    # A tag whose every value was purged (orphaned by a restart) stays listed: leave it out.
    out = {tag: values for tag, values in out.items() if values}
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
