#!/usr/bin/env bash
# The Python face against open_clip's own data path, side by side in one run (not in CI):
#   1. loader only: ferroclip.Loader from Python vs open_clip's webdataset pipeline
#      (scripts/bench/loader/python_peer.py), 1 and 2 cores, batch 256 at 224 px;
#   2. examples/python/train_open_clip.py (open_clip's tiny CLIP, ClipLoss, AdamW) fed by
#      each: step time and the share of it spent waiting for data, 1 and 2 loader workers.
# Needs scripts/setup.sh (the wheel) and .venv-ref; installs the wheel (and pandas, which
# open_clip_train.data imports) into .venv-ref. Shards: scripts/bench/loader's 6,000 JPEGs.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
export HF_HUB_OFFLINE=1
py=.venv-ref/bin/python
data=data/bench/loader
[ -f "$data/00005.tar" ] || $py scripts/bench/loader/make_shards.py --out "$data"
$py -m pip install -q --disable-pip-version-check --no-deps --force-reinstall target/wheels/ferroclip-*.whl
$py -c 'import pandas' 2>/dev/null || $py -m pip install -q --disable-pip-version-check pandas==2.3.3
shards=("$data"/0*.tar)

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## loader only"
for threads in 1 2; do
  $py scripts/bench/python_loader/loader_only.py "$threads" "${shards[@]}"
  $py scripts/bench/loader/python_peer.py pipeline "$threads" "${shards[@]}" 2>/dev/null
done
echo "## open_clip's tiny CLIP trained 40 steps of 128 at 64 px, 1 torch thread, 1 and 2 loader workers"
spec="$data/{00000..00005}.tar"
for workers in 1 2; do
  for loader in ferroclip open_clip; do
    $py examples/python/train_open_clip.py --shards "$spec" --loader "$loader" --model tiny \
      --batch-size 128 --steps 40 --workers "$workers" --torch-threads 1 --log-every 1000 2>/dev/null | tail -1
  done
done
echo "## the same with 2 torch threads and 1 loader worker: the loader competes with the step for the cores"
for loader in ferroclip open_clip; do
  $py examples/python/train_open_clip.py --shards "$spec" --loader "$loader" --model tiny \
    --batch-size 128 --steps 30 --workers 1 --torch-threads 2 --log-every 1000 2>/dev/null | tail -1
done
