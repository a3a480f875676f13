#!/usr/bin/env bash
# Builds, on this (CPU) machine, what scripts/gpu_check.sh runs on a lent GPU machine, which has
# torch 2.11.0 + CUDA 13 + NCCL in its Python image but no crate registry and no MPI:
#
#   target/gpu/ferroclip    the CLI, release, features `nccl` (implies `cuda`), no `mpi`
#   target/gpu/step_time    the trainer's step_time example, same features
#   target/gpu/pydeps/      open_clip and its pure-Python helpers from .venv-ref (if present), so
#                           gpu_check.sh can time open_clip's step beside ours
#
# Carry `target/gpu` to the GPU machine (the run tool's `carry`, 64 MiB in all) and run
# scripts/gpu_check.sh there.
#
# Linking: rustc links with --as-needed and nothing references a libtorch_cuda symbol, so without
# the `cuda` feature's link args (build.rs: -Wl,--no-as-needed -ltorch_cuda) the CUDA backend is
# silently absent (docs/architecture.md §9). This script checks that libtorch_cuda.so is NEEDED.
#
# Uses its own target dir (target/gpu-build) so the shared target/release keeps its default-feature
# artifacts; the first run builds all dependencies in release (several minutes on 2 cores).
#
#   scripts/gpu_build.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=env.sh
source scripts/env.sh

export CARGO_TARGET_DIR="${GPU_TARGET_DIR:-$root/target/gpu-build}"
# No debug info: the carried folder must stay small.
export CARGO_PROFILE_RELEASE_DEBUG=0
export CARGO_PROFILE_RELEASE_STRIP=debuginfo
out="$root/target/gpu"
mkdir -p "$out"

features=(--no-default-features --features nccl)
echo "[gpu_build] cargo build --release ${features[*]} (bin ferroclip) into $CARGO_TARGET_DIR" >&2
cargo build --release "${features[@]}" --bin ferroclip
echo "[gpu_build] cargo build --release -p trainer ${features[*]} --example step_time" >&2
cargo build --release -p trainer "${features[@]}" --example step_time

cp -f "$CARGO_TARGET_DIR/release/ferroclip" "$out/ferroclip"
cp -f "$CARGO_TARGET_DIR/release/examples/step_time" "$out/step_time"
strip "$out/ferroclip" "$out/step_time"  # symbols too: the carried folder must stay small

status=0
for bin in "$out/ferroclip" "$out/step_time"; do
    needed="$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
    echo "[gpu_build] $(basename "$bin") NEEDED: $needed" >&2
    if [[ " $needed " != *" libtorch_cuda.so "* ]]; then
        echo "[gpu_build] ERROR: $bin does not link libtorch_cuda.so: tch would see no CUDA" >&2
        status=1
    fi
    if [[ " $needed " == *" libmpi"* ]]; then
        echo "[gpu_build] ERROR: $bin links MPI, which the GPU machines lack" >&2
        status=1
    fi
done

# open_clip for the side-by-side step: pure-Python packages only (the compiled ones, torchvision and
# regex, must come from the GPU machine's own image; gpu_check.sh says so if they are missing).
ref_site="$root/.venv-ref/lib/python3.11/site-packages"
rm -rf "$out/pydeps"
if [[ -d "$ref_site/open_clip" ]]; then
    mkdir -p "$out/pydeps"
    for pkg in open_clip ftfy wcwidth; do
        [[ -d "$ref_site/$pkg" ]] && cp -r "$ref_site/$pkg" "$out/pydeps/"
    done
    find "$out/pydeps" -name '__pycache__' -type d -prune -exec rm -rf {} +
else
    echo "[gpu_build] no .venv-ref/open_clip: gpu_check.sh will time ferroclip only" >&2
fi

# The demo's train and zero-shot shards (scripts/demo.sh builds them), for the train-loop check.
rm -rf "$out/data"
if [[ -d data/emoji/shards/train ]]; then
    # The first 4 of the 8 train shards (2,000 of 3,786 samples): all 8 would not fit the carry limit.
    mkdir -p "$out/data/train"
    cp data/emoji/shards/train/0000[0-3].tar "$out/data/train/"
    python3 -c 'import json,sys; print(json.dumps({f"0000{i}.tar": 500 for i in range(4)}, indent=2))' \
        > "$out/data/train/sizes.json"
    if [[ -d data/emoji/shards/zeroshot ]]; then
        cp -r data/emoji/shards/zeroshot "$out/data/zeroshot"
        cp data/emoji/classnames.txt data/emoji/templates.txt "$out/data/"
    fi
else
    echo "[gpu_build] no data/emoji/shards (run scripts/demo.sh): gpu_check.sh will skip its train loop" >&2
fi

du -sh "$out" "$out"/* >&2
size_kib="$(du -sk "$out" | cut -f1)"
if (( size_kib > 60 * 1024 )); then
    echo "[gpu_build] ERROR: $out is ${size_kib} KiB, over the ~60 MiB that can be carried" >&2
    status=1
fi
exit "$status"
