#!/usr/bin/env bash
# The MCP tool loop's overhead: the worker's time per call outside the model and the MCP server
# (p50/p99), beside the same task run by the client (the way agent frameworks call MCP tools),
# against a real MCP server on the official Python SDK. Prints a table; see docs/benchmarks.md.
#
#   scripts/bench-tools.sh [REQUESTS]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
PYTHON="$OPENLEDGER_VENV/bin/python"
[ -x "$PYTHON" ] && "$PYTHON" -c 'import openai, mcp' 2>/dev/null || die "no Python venv with openai and mcp at $OPENLEDGER_VENV; run scripts/setup.sh"
step "building the worker (release)"
build_worker
step "tool loop: worker loop and client loop, one request at a time"
"$PYTHON" "$REPO_ROOT/scripts/bench/tool_loop.py" "$CARGO_TARGET_DIR/release/openledger-worker" "${1:-40}"
