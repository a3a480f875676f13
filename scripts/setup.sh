#!/usr/bin/env bash
# Installs everything ferroclip needs on a fresh Debian 12 machine, from the
# package registries only. Idempotent: a second run checks and does nothing.
#   - .venv: libtorch from the PyPI torch==2.11.0 wheel (no CUDA deps) plus the two
#     small CUDA runtime wheels libtorch_cpu links against (tch 0.24.0 needs 2.11.0)
#   - data/npm: the emoji image packs used by the demo (npm)
#   - .venv also: the Python test tools (maturin builds the `ferroclip` wheel, pytest and
#     numpy test it, tensorboard's event reader checks the event files a run writes)
#   - .venv also: the `ferroclip` Python package (python/, built by maturin from this
#     checkout; reinstalled when what it contains changes)
#   - Debian: chromium renders `ferroclip report` pages in the tests; OpenMPI (openmpi-bin, libopenmpi-dev) and libclang-dev for the `mpi` feature;
#     wordnet-base (WordNet 3.0) for MetaCLIP metadata and K-LITE glosses
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

TORCH_VERSION=2.11.0
PY_WHEELS=(torch==$TORCH_VERSION nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
PY_TOOLS=(maturin==1.16.0 numpy==2.4.6 pytest==9.2.0 tensorboard==2.21.0)
NPM_PACKS=(emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0 emojibase-data@16.0.3)

say() { printf '[setup] %s\n' "$*" >&2; }

need() { command -v "$1" >/dev/null 2>&1; }

# Toolchain pieces that come from Debian when missing.
missing_debs=()
need g++ || missing_debs+=(g++)
need npm || missing_debs+=(npm)
need python3 || missing_debs+=(python3 python3-venv)
# OpenMPI (the CPU collectives backend and mpirun) and libclang (bindgen in mpi-sys).
for deb in openmpi-bin libopenmpi-dev libclang-dev wordnet-base slurm-wlm munge iproute2 libturbojpeg0-dev chromium; do
  dpkg -s "$deb" >/dev/null 2>&1 || missing_debs+=("$deb")
done
if [ ${#missing_debs[@]} -gt 0 ]; then
  say "apt-get install ${missing_debs[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}"
fi
need cargo || { say "cargo (Rust 1.95) is required and cannot be installed from the registries here"; exit 1; }

# libtorch from PyPI.
installed_torch() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true; }
if [ "$(installed_torch)" != "$TORCH_VERSION" ] || [ ! -f .venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so ]; then
  say "installing libtorch (PyPI ${PY_WHEELS[*]}) into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --no-deps "${PY_WHEELS[@]}"
fi
[ -f .venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so ] \
  || { say "libtorch missing after install: .venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so"; exit 1; }

# Python test tools (with their dependencies).
have_py_tools() {
  for p in "${PY_TOOLS[@]}"; do
    [ "$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('${p%==*}'))" 2>/dev/null)" = "${p#*==}" ] || return 1
  done
}
if ! have_py_tools; then
  say "installing ${PY_TOOLS[*]} into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "${PY_TOOLS[@]}"
fi

# The ferroclip Python package, built from this checkout (cargo makes a second run cheap).
# The wheel's content (not its bytes: zip timestamps differ) decides whether to reinstall.
say "building the ferroclip Python wheel (python/)"
rm -f target/wheels/ferroclip-*.whl
built=$(cd python && CARGO_TARGET_DIR="$root/target" ../.venv/bin/maturin build --release --quiet \
  --compatibility linux -o "$root/target/wheels" 2>&1) || { printf '%s\n' "$built" >&2; exit 1; }
wheel=$(ls target/wheels/ferroclip-*.whl)
wheel_digest() {
  python3 -c 'import hashlib, sys, zipfile
z = zipfile.ZipFile(sys.argv[1]); h = hashlib.sha256()
for n in sorted(z.namelist()):
    if ".dist-info/" not in n: h.update(n.encode() + z.read(n))
print(h.hexdigest())' "$1"
}
digest=$(wheel_digest "$wheel")
if [ "$(cat .venv/ferroclip-wheel.digest 2>/dev/null)" != "$digest" ]; then
  say "installing $wheel into .venv"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
  echo "$digest" > .venv/ferroclip-wheel.digest
fi

# Emoji data packs from npm.
have_npm_packs() {
  for p in "${NPM_PACKS[@]}"; do
    name=${p%@*}; ver=${p##*@}
    f=data/npm/node_modules/$name/package.json
    [ -f "$f" ] && grep -q "\"version\": \"$ver\"" "$f" || return 1
  done
}
if ! have_npm_packs; then
  say "installing npm packs ${NPM_PACKS[*]} into data/npm"
  mkdir -p data/npm
  npm install --silent --no-save --no-audit --no-fund --prefix data/npm "${NPM_PACKS[@]}"
fi
say "ready"
