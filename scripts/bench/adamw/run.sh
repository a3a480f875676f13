#!/usr/bin/env bash
# The AdamW update alone, ferroclip (elementwise and fused, optim.fused) beside
# torch.optim.AdamW (for-loop, foreach, fused) on the same model's parameters, in one run
# (not in CI). Needs .venv-ref for the torch side.
#   scripts/bench/adamw/run.sh [--threads 2] [--rounds 5]
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
source scripts/env.sh
export HF_HUB_OFFLINE=1
threads=2 rounds=5
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
cargo build -q --release -p trainer --example adamw_time
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $threads threads"
for pair in "vit-b-32 ViT-B-32" "vit-b-16 ViT-B-16"; do
  set -- $pair
  target/release/examples/adamw_time --model "$1" --threads "$threads" --rounds "$rounds"
  .venv-ref/bin/python scripts/bench/adamw/torch_adamw.py --model "$2" --threads "$threads" --rounds "$rounds"
done
