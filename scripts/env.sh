# Sourced by the other scripts: where libtorch lives (the PyPI torch wheel in .venv).
FERROCLIP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LIBTORCH="$FERROCLIP_ROOT/.venv/lib/python3.11/site-packages/torch"
export LIBTORCH_BYPASS_VERSION_CHECK=0
