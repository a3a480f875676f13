#!/usr/bin/env bash
# Cooldown branching against independent runs, side by side in one run (not in CI):
#   1. `sweep plan` of both sweeps (the compute each states);
#   2. branched.toml: a constant-lr trunk and cooldowns of 100, 200 and 400 steps;
#   3. independent.toml: the same lengths as const-cooldown runs from scratch, seed 0 (the
#      branched sweep's seed) and seed 1 (the seed-to-seed spread);
#   4. per length: the mean loss of the last 20 steps, zero-shot top-1 and retrieval R@1,
#      whether the branch's weights are byte-identical to the independent seed-0 run, and
#      the steps and wall time each sweep took.
# Needs scripts/demo.sh's emoji shards (data/emoji/shards). Run from anywhere.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
source scripts/env.sh
[ -d data/emoji/shards/train ] || { echo "run scripts/demo.sh first (it builds data/emoji/shards)" >&2; exit 1; }
cargo build -q --release -p ferroclip
bin=target/release/ferroclip
here=scripts/bench/cooldown_sweep
rm -rf runs/bench/cd-branched runs/bench/cd-independent

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## plan"
$bin sweep plan $here/branched.toml | tail -1
$bin sweep plan $here/independent.toml | grep '^total'
timed() {  # label, then the command; prints wall seconds
  local start end
  start=$(date +%s.%N)
  "${@:2}" > "runs/bench/$1.log" 2>&1 || { cat "runs/bench/$1.log"; exit 1; }
  end=$(date +%s.%N)
  echo "$1: $(python3 -c "print(f'{$end - $start:.0f}')") s wall"
}
mkdir -p runs/bench
echo "## runs (one at a time, 2 threads each)"
timed branched $bin sweep run $here/branched.toml
timed independent $bin sweep run $here/independent.toml
$bin sweep collect $here/branched.toml > /dev/null
$bin sweep collect $here/independent.toml > /dev/null
python3 $here/compare.py runs/bench
