//! Chain specifications built from the runtime's genesis presets.

use openledger_runtime_wasm::WASM_BINARY;
use polkadot_sdk::{sc_service::ChainType, sp_genesis_builder};

pub type ChainSpec = polkadot_sdk::sc_service::GenericChainSpec;

/// OPEN: symbol, 18 decimals, the generic Substrate address format.
fn properties() -> polkadot_sdk::sc_service::Properties {
	serde_json::json!({ "tokenSymbol": "OPEN", "tokenDecimals": 18, "ss58Format": 42 })
		.as_object()
		.cloned()
		.unwrap_or_default()
}

fn wasm() -> Result<&'static [u8], String> {
	WASM_BINARY.ok_or_else(|| "the wasm runtime was not built (SKIP_WASM_BUILD was set)".to_string())
}

/// One validator (Alice), instant seal with immediate finality.
pub fn development() -> Result<ChainSpec, String> {
	Ok(ChainSpec::builder(wasm()?, None)
		.with_name("OpenLedger Development")
		.with_id("openledger_dev")
		.with_chain_type(ChainType::Development)
		.with_genesis_config_preset_name(sp_genesis_builder::DEV_RUNTIME_PRESET)
		.with_properties(properties())
		.build())
}

/// Alice and Bob validating with Aura and GRANDPA.
pub fn local_testnet() -> Result<ChainSpec, String> {
	Ok(ChainSpec::builder(wasm()?, None)
		.with_name("OpenLedger Local Testnet")
		.with_id("openledger_local")
		.with_chain_type(ChainType::Local)
		.with_genesis_config_preset_name(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET)
		.with_properties(properties())
		.build())
}
