#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs every test.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
source scripts/env.sh
export RUST_BACKTRACE=1
# The shape of the code (docs/architecture.md §2): file sizes, module cycles, the train loop's
# length; the checker first proves on planted violations that it catches each of them.
python3 scripts/check_layout.py --self-test
python3 scripts/check_layout.py
cargo build --workspace --all-targets
# The GPU backend (feature nccl: cudarc, libraries dlopened at run time) must keep compiling here;
# it is only type-checked (a linked binary needs the CUDA libraries at run time; see gpu_build.sh).
cargo check -p trainer --features nccl --all-targets
cargo check --no-default-features --features nccl --bin ferroclip
cargo test --workspace -- --test-threads=2
# The Python package (built and installed into .venv by setup.sh) against the binary just built.
FERROCLIP_BIN="$root/target/debug/ferroclip" .venv/bin/python -m pytest -q python/tests
