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
# With OPENLEDGER_PHASE_LOG set (`.ci/run` sets it), each step is also appended to that file with
# its start time, so scripts/ci-times.sh can say how long every phase took.
step() {
	printf '\n==> %s\n' "$*" >&2
	[ -z "${OPENLEDGER_PHASE_LOG:-}" ] || printf '%s\t%s\n' "$(date +%s)" "$*" >>"$OPENLEDGER_PHASE_LOG"
}
# The node and the worker are built in two cargo invocations, never in one. Cargo unifies the
# features of shared dependencies over the packages of an invocation, and the node's dependencies
# turn on serde_json's `arbitrary_precision`, which changes how the worker parses JSON numbers (an
# integer `temperature` got a 422). Each keeps its own feature set, at the price of the crates
# they share being compiled twice. Every script builds and tests through these lists, so the
# artifacts of one step serve the next.
NODE_PACKAGES=(-p openledger-node)
WORKER_PACKAGES=(-p openledger-worker -p openledger-engine -p openledger-knowledge -p openledger-factory -p openledger-ledger -p openledger-tasks -p openledger-mcp)
build_node() { cargo build --release "${NODE_PACKAGES[@]}" ${OPENLEDGER_CARGO_TIMINGS:+--timings} "$@"; }
build_worker() { cargo build --release "${WORKER_PACKAGES[@]}" ${OPENLEDGER_CARGO_TIMINGS:+--timings} "$@"; }
build_release() { build_node && build_worker; }
# The spec-bumped runtime that the chain end-to-end tests upgrade to. Built with the node's
# invocation, so every dependency keeps its features and only openledger-runtime-upgrade is new.
# Its wasm build shares the node's wasm target directory (same profile, target and flags): only
# the runtime crate is compiled again for wasm, not its ~300 dependencies. Its blob has a
# directory of its own, so the node's runtime is never replaced.
UPGRADE_WASM="$CARGO_TARGET_DIR/release/wbuild/openledger-runtime-upgrade/openledger_runtime_upgrade.compact.compressed.wasm"
build_upgrade_runtime() {
	local wbuild="$CARGO_TARGET_DIR/release/wbuild"
	mkdir -p "$wbuild/openledger-runtime-wasm/target" "$wbuild/openledger-runtime-upgrade"
	[ -L "$wbuild/openledger-runtime-upgrade/target" ] \
		|| { rm -rf "$wbuild/openledger-runtime-upgrade/target"; ln -s ../openledger-runtime-wasm/target "$wbuild/openledger-runtime-upgrade/target"; }
	build_node -q -p openledger-runtime-upgrade
	[ -f "$UPGRADE_WASM" ] || die "no upgrade runtime at $UPGRADE_WASM"
}
# llama.cpp, the reference engine for tokens and speed: llama-cpp-python's Python bindings, and
# the llama.cpp sources its sdist vendors built with cmake into $LLAMA_CPP_DIR/build (once per
# machine). Only the targets asked for are built: the bindings need the `llama` library alone,
# not the `common` library that a pip build of the package compiles too (half its C++). The CPU's
# SIMD flags are named one by one instead of GGML_NATIVE, which dies with SIGILL on the AMX Xeons
# of some VMs; the flags the build was configured with are recorded, so another CPU's is redone.
LLAMA_CPP_VERSION=0.3.36
LLAMA_CPP_DIR="${OPENLEDGER_LLAMA_CPP_DIR:-/var/tmp/openledger-llama.cpp-$LLAMA_CPP_VERSION}"
llama_cpp_cmake_args() {
	local args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" flag option
	local flags; flags=" $(grep -m1 '^flags' /proc/cpuinfo) "
	for pair in avx512f:AVX512 avx512_vnni:AVX512_VNNI avx512vbmi:AVX512_VBMI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
		flag="${pair%%:*}" option="${pair#*:}"
		[[ "$flags" == *" $flag "* ]] && args+=" -DGGML_$option=ON"
	done
	echo "$args"
}
LLAMA_CPP_SDIST="$LLAMA_CPP_DIR/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
LLAMA_CPP_SRC="$LLAMA_CPP_DIR/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
# The llama.cpp sources the sdist vendors, unpacked into $LLAMA_CPP_SRC (once per machine).
llama_cpp_sources() {
	if [ ! -f "$LLAMA_CPP_SRC/CMakeLists.txt" ]; then
		mkdir -p "$LLAMA_CPP_DIR"
		"$OPENLEDGER_VENV/bin/pip" download --quiet --no-deps --no-binary llama-cpp-python --dest "$LLAMA_CPP_DIR" \
			"llama-cpp-python==$LLAMA_CPP_VERSION" || die "downloading llama-cpp-python's sdist failed"
		tar -xzf "$LLAMA_CPP_SDIST" -C "$LLAMA_CPP_DIR" || die "unpacking $LLAMA_CPP_SDIST failed"
	fi
}
build_llama_cpp() { # cmake target...
	local src="$LLAMA_CPP_SRC" build="$LLAMA_CPP_DIR/build"
	local args="${CMAKE_ARGS:-$(llama_cpp_cmake_args)}"
	llama_cpp_sources
	"$OPENLEDGER_VENV/bin/pip" install --quiet 'cmake>=3.21,<5' ninja || die "installing cmake and ninja failed"
	if [ "$(cat "$build/openledger-cmake-args" 2>/dev/null)" != "$args" ]; then
		rm -rf "$build"
		# Shared libraries that find each other where they are copied ($ORIGIN); no curl, tests
		# or examples. The tools (llama-server) are configured, built only when asked for.
		PATH="$OPENLEDGER_VENV/bin:$PATH" cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
			-DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' \
			-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $args >"$LLAMA_CPP_DIR/configure.log" 2>&1 \
			|| { tail -n 30 "$LLAMA_CPP_DIR/configure.log" >&2; die "configuring llama.cpp failed ($LLAMA_CPP_DIR/configure.log)"; }
		echo "$args" >"$build/openledger-cmake-args"
	fi
	echo "building llama.cpp ($*; $args)"
	# ninja's [n/total] lines, shortened to the file, are the progress.
	PATH="$OPENLEDGER_VENV/bin:$PATH" cmake --build "$build" --target "$@" -j "$(nproc)" 2>&1 \
		| awk '/^\[[0-9]+\/[0-9]+\]/ {print "  " $1, $NF; fflush(); next} {print; fflush()}' \
		|| die "building llama.cpp's $* failed (above)"
}
install_llama_cpp() {
	local record="$OPENLEDGER_VENV/llama-cpp-cmake-args" args="${CMAKE_ARGS:-$(llama_cpp_cmake_args)}"
	if "$OPENLEDGER_VENV/bin/python" -c "import llama_cpp, gguf, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_VERSION')" 2>/dev/null \
		&& [ "$(cat "$record" 2>/dev/null)" = "$args" ]; then
		echo "llama-cpp-python $LLAMA_CPP_VERSION already installed ($args)"
		return 0
	fi
	build_llama_cpp llama
	# The package itself without its C++ (LLAMA_BUILD=OFF), then the libraries just built where
	# it loads them from, its own dependencies, and the gguf writer the model-family checks use.
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$OPENLEDGER_VENV/bin/pip" install --quiet --force-reinstall --no-deps \
		"$LLAMA_CPP_SDIST" || die "installing llama-cpp-python failed"
	local lib_dir
	lib_dir="$("$OPENLEDGER_VENV/bin/python" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llama_cpp").origin))')/lib"
	mkdir -p "$lib_dir"
	cp -a "$LLAMA_CPP_DIR/build/bin/"lib*.so* "$lib_dir/" || die "no llama.cpp libraries in $LLAMA_CPP_DIR/build/bin"
	"$OPENLEDGER_VENV/bin/pip" install --quiet "llama-cpp-python==$LLAMA_CPP_VERSION" gguf==0.19.0 \
		|| die "installing llama-cpp-python's dependencies failed"
	"$OPENLEDGER_VENV/bin/python" -c 'import llama_cpp, gguf' || die "llama_cpp does not import after installing"
	echo "$args" >"$record"
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prints N distinct free loopback TCP ports on one line. They are bound all at once: ports asked
# for one by one can repeat, and a node given its RPC port as its p2p port too serves RPC on a
# random port instead.
free_ports() {
	python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# Waits until the node with `pid`, logging to `log`, answers RPC on `port`. Fails at once if it
# exited, or if its RPC port was taken: the node then serves on a random one and says so.
wait_node_rpc() { # port, pid, log
	for _ in $(seq 1 240); do
		curl -sf -H 'Content-Type: application/json' \
			-d '{"id":1,"jsonrpc":"2.0","method":"system_health","params":[]}' \
			"http://127.0.0.1:$1" >/dev/null && return 0
		kill -0 "$2" 2>/dev/null || { tail -n 40 "$3" >&2; die "the node exited"; }
		local serving
		serving="$(grep -o 'Running JSON-RPC server: addr=[^ ]*' "$3" | head -n 1 || true)"
		if [ -n "$serving" ] && ! [[ "$serving" =~ addr=127\.0\.0\.1:$1(,|$) ]]; then
			die "RPC port $1 was taken when the node started (${serving#Running })"
		fi
		sleep 0.5
	done
	tail -n 40 "$3" >&2
	die "the node did not answer RPC on port $1"
}
