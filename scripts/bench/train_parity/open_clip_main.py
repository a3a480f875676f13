"""`python -m open_clip_train.main`, for scripts/bench/train_parity, with three shims that
change nothing in the recipe:

1. the bench's model config (a JSON file, the one ferroclip trains too) is registered with
   `open_clip.add_model_config`, so `--model <its stem>` finds it without editing the venv;
2. webdataset 1.0.2 ends every tar with an empty dict that open_clip_train 3.3.0's
   `group_by_keys_nothrow` cannot read (`KeyError: 'fname'`): those are dropped first;
3. on a CPU, open_clip_train wraps the model in DistributedDataParallel with
   `device_ids=[device]`, which torch refuses for CPU modules; the wrapper passes none.

Usage (under torchrun): open_clip_main.py MODEL_CONFIG.json -- <open_clip_train.main flags>
"""
import sys

import open_clip
import open_clip_train.data as open_clip_data
import open_clip_train.main as open_clip_main
import torch


def main() -> None:
    config, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: open_clip_main.py MODEL_CONFIG.json -- FLAGS"
    open_clip.add_model_config(config)

    expand = open_clip_data.tar_file_expander
    open_clip_data.tar_file_expander = lambda *a, **k: (s for s in expand(*a, **k) if s)

    class CpuDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, module, device_ids=None, **kwargs):
            on_cpu = device_ids and all(torch.device(d).type == "cpu" for d in device_ids)
            super().__init__(module, device_ids=None if on_cpu else device_ids, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuDDP  # main.py reads it at call time
    open_clip_main.main(argv)


if __name__ == "__main__":
    main()
