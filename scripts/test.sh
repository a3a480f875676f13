#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs every test.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
source scripts/env.sh
export RUST_BACKTRACE=1
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
