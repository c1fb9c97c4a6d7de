//! Builds this crate for wasm (that is, the runtime) and writes `WASM_BINARY` into `OUT_DIR`.
//! `SKIP_WASM_BUILD=1` skips it, leaving `WASM_BINARY` `None`.

fn main() {
	// Natively only: inside its own wasm build this crate has no `std` and nothing to build.
	#[cfg(feature = "std")]
	substrate_wasm_builder::WasmBuilder::build_using_defaults();
}
