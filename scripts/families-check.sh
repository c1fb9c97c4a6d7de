#!/usr/bin/env bash
# The model families against llama.cpp: tiny random-weight GGUF models of every architecture,
# weight type and rope variant the engine runs, scored by both engines over the same tokens
# (scripts/families/compare.py says what is compared and how closely), SentencePiece tokenizers,
# and the real Gemma 3 270M over 21 prompts. Prints tables; fails if anything differs beyond
# its tolerance.
#
#   scripts/families-check.sh [--case NAME ...]
#   scripts/families-check.sh --install-only     # only build llama-cpp-python (once per machine)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

[ -x "$OPENLEDGER_VENV/bin/python" ] || "$REPO_ROOT/scripts/setup.sh"
step "llama-cpp-python $LLAMA_CPP_VERSION in $OPENLEDGER_VENV"
install_llama_cpp
[ "${1:-}" != --install-only ] || exit 0

step "building the engine's logits and tokenize examples (release)"
# In the worker's invocation, so its dependencies keep the worker build's features.
build_worker -q --example logits --example tokenize

step "model families: this engine against llama.cpp"
GEMMA="$OPENLEDGER_MODELS/gemma3/gemma-3-270m-q4_k_m.gguf"
[ -f "$GEMMA" ] || die "$GEMMA is missing (scripts/setup.sh fetches it)"
"$OPENLEDGER_VENV/bin/python" scripts/families/compare.py --logits "$CARGO_TARGET_DIR/release/examples/logits" \
	--tokenize "$CARGO_TARGET_DIR/release/examples/tokenize" --real-model "$GEMMA" "$@"
