#!/usr/bin/env bash
# Checks that the worker's crates depend on each other one way only:
#
#   openledger-worker (HTTP API, p2p, CLI) → openledger-ledger, openledger-knowledge, openledger-mcp
#   openledger-factory (training adapters from DataNets) → openledger-knowledge, openledger-engine
#   openledger-knowledge (DataNets, attribution, templates) → openledger-engine
#   openledger-engine (model, kernels, scheduler, adapters) → openledger-primitives
#   openledger-engine, openledger-ledger, openledger-worker → openledger-tasks (the blocking pool)
#   openledger-mcp (the MCP client) → openledger-primitives; nothing of the worker's
#
# and that the lower layers stay free of what belongs above them: no HTTP server, p2p or chain
# client in the engine or the knowledge crate, no inference in the ledger. Cargo already refuses a
# cycle; this catches an arrow added the wrong way before it becomes one. Fails with the path of
# the offending dependency.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

# crate: what must not be among its (transitive, normal) dependencies
check() {
	local crate="$1"; shift
	local deps
	deps="$(cargo tree -q -p "$crate" -e normal --prefix none -f '{p}' | cut -d' ' -f1 | sort -u)"
	[ -n "$deps" ] || die "cargo tree listed nothing for $crate"
	local bad
	for bad in "$@"; do
		if grep -qx "$bad" <<<"$deps"; then
			cargo tree -q -p "$crate" -e normal -i "$bad" >&2 || true
			die "$crate depends on $bad (shown above), against the worker's layering"
		fi
	done
	echo "$crate: $(wc -l <<<"$deps") crates, none of: $*"
}

ABOVE_ENGINE=(openledger-knowledge openledger-factory openledger-ledger openledger-worker)
SERVICES=(axum libp2p subxt subxt-signer redb)
check openledger-engine "${ABOVE_ENGINE[@]}" "${SERVICES[@]}"
check openledger-knowledge openledger-ledger openledger-worker openledger-factory "${SERVICES[@]}"
check openledger-factory openledger-ledger openledger-worker openledger-mcp "${SERVICES[@]}"
check openledger-tasks openledger-primitives openledger-engine openledger-knowledge openledger-ledger openledger-worker
check openledger-ledger openledger-engine openledger-knowledge openledger-worker axum libp2p candle-core
check openledger-mcp openledger-engine openledger-knowledge openledger-ledger openledger-worker axum libp2p subxt candle-core
