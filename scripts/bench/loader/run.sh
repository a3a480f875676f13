#!/usr/bin/env bash
# Loader benchmark, ferroclip vs OpenCLIP's webdataset + PIL pipeline, side by side in one run.
#   scripts/bench/loader/run.sh            # images/s for each side, 1 and 2 cores
#   RSS_GB=1 scripts/bench/loader/run.sh   # also the Loader's peak RSS over ~1 GB of shards
# Needs scripts/setup.sh (libtorch, emoji packs, libturbojpeg0-dev) and .venv-ref. Makes the
# shards under data/bench/loader once (scripts/bench/loader/make_shards.py, 6,000 JPEGs of
# 256-512 px from the emoji packs), and a second set from photographs under
# data/bench/loader_photos (the two sample photos in scikit-learn's wheel, .venv-ref).
# Prints JSON lines; docs/benchmarks.md records a run.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
source scripts/env.sh
export HF_HUB_OFFLINE=1
py=.venv-ref/bin/python
data=data/bench/loader

photos=data/bench/loader_photos
[ -f "$data/00005.tar" ] && [ -s "$data/00005.tar" ] || $py scripts/bench/loader/make_shards.py --out "$data"
[ -f "$photos/00005.tar" ] && [ -s "$photos/00005.tar" ] ||
  $py scripts/bench/loader/make_shards.py --source photos --out "$photos"
cargo build --release -q -p dataloader --example loader_bench
bench=target/release/examples/loader_bench
shards=("$data"/0*.tar)

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## raw decode, one core"
$bench raw "${shards[@]}" 2>/dev/null
$py scripts/bench/loader/python_peer.py raw "${shards[@]}"
echo "## reduced-scale JPEG decode (JpegDraft), one core: decode+crop+normalize per draft mode, pixel difference, raw decode at M/8"
$bench draft "${shards[@]}" 2>/dev/null
echo "## resize only, one core"
$bench resize "${shards[@]}" 2>/dev/null
echo "## full pipeline (decode + RandomResizedCrop 224 + normalize + tokenize + batch 256)"
$bench fused "${shards[@]}" 2>/dev/null
for threads in 1 2; do
  $bench loader "$threads" "${shards[@]}" 2>/dev/null
  $bench loader_u8 "$threads" "${shards[@]}" 2>/dev/null
  $py scripts/bench/loader/python_peer.py pipeline "$threads" "${shards[@]}" 2>/dev/null
done
echo "## the same on photographs: raw decode, resize, fused, Loader (f32, u8), Python; one core"
photo_shards=("$photos"/0*.tar)
$bench raw "${photo_shards[@]}" 2>/dev/null
$py scripts/bench/loader/python_peer.py raw "${photo_shards[@]}"
$bench resize "${photo_shards[@]}" 2>/dev/null
$bench fused "${photo_shards[@]}" 2>/dev/null
$bench loader 1 "${photo_shards[@]}" 2>/dev/null
$bench loader_u8 1 "${photo_shards[@]}" 2>/dev/null
$py scripts/bench/loader/python_peer.py pipeline 1 "${photo_shards[@]}" 2>/dev/null
echo "## what loader_u8 leaves to the device: u8 -> f32 normalise of one 256x3x224x224 batch, libtorch CPU"
$py scripts/bench/loader/device_normalize_cost.py

if [ -n "${RSS_GB:-}" ]; then
  # ~1 GB of shards as symlinks to the bench shards (no extra disk), read by 2 threads.
  big=data/bench/loader_1g
  rm -rf "$big" && mkdir -p "$big"
  size=$(du -bc "${shards[@]}" | tail -1 | cut -f1)
  copies=$(( (RSS_GB * 1000000000 + size - 1) / size ))
  n=0
  for ((c = 0; c < copies; c++)); do
    for s in "${shards[@]}"; do ln -s "$root/$s" "$(printf '%s/%05d.tar' "$big" $n)"; n=$((n + 1)); done
  done
  echo "## peak RSS, Loader with 2 threads over $n shards ($((copies * size / 1000000)) MB)"
  /usr/bin/time -f 'max RSS by /usr/bin/time: %M KiB' $bench loader 2 "$big"/*.tar
  rm -rf "$big"
fi
