//! Builds this crate for wasm, which is the runtime with its `upgrade-test` feature. The blob lands
//! in `<target>/release/wbuild/openledger-runtime-upgrade/`, beside the node's own runtime, never
//! over it.

fn main() {
	// Natively only: inside its own wasm build this crate has no `std` and nothing to build.
	#[cfg(feature = "std")]
	substrate_wasm_builder::WasmBuilder::build_using_defaults();
}
