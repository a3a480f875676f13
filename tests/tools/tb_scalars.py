"""Reads a folder of TensorBoard event files with tensorboard's own reader and prints
its scalars as JSON: {"tag": [[step, value], ...]}. NaN and infinities are written as
the strings "nan", "inf", "-inf" (JSON has no such numbers).

    tb_scalars.py DIR          what EventAccumulator holds (restart purges applied)
    tb_scalars.py --raw DIR    every scalar event of every file, files in name order

Used by the Rust tests (tests/cli_tensorboard.rs, trainer/tests/tensorboard_events.rs)
through .venv/bin/python, where scripts/setup.sh installs tensorboard.
"""
import json
import math
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader


def number(x):
    return x if math.isfinite(x) else str(x)


def accumulated(folder):
    # size_guidance 0: keep every scalar (the default samples 10 000 per tag).
    acc = EventAccumulator(folder, size_guidance={"scalars": 0})
    acc.Reload()
    out = {
        tag: [[e.step, number(e.value)] for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }
    # A tag whose every value was purged (orphaned by a restart) stays listed: leave it out.
    return {tag: values for tag, values in out.items() if values}


def raw(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if "tfevents" not in name:
            continue
        for event in LegacyEventFileLoader(os.path.join(folder, name)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append([event.step, number(value.simple_value)])
    return out


def main(args):
    out = raw(args[1]) if args[0] == "--raw" else accumulated(args[0])
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
