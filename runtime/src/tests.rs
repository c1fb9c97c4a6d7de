//! Runtime-level checks: the genesis presets build and fund what must exist.

use crate::{
	configs::TreasuryAccount, genesis_config_presets, Balances, Runtime, RuntimeGenesisConfig,
	EXISTENTIAL_DEPOSIT,
};
use polkadot_sdk::{
	frame_support::traits::fungible::Inspect,
	sp_genesis_builder,
	sp_io::TestExternalities,
	sp_keyring::Sr25519Keyring,
	sp_runtime::BuildStorage,
};

fn externalities(preset: &str) -> TestExternalities {
	let json = genesis_config_presets::get_preset(&preset.into()).expect("preset exists");
	let config: RuntimeGenesisConfig =
		serde_json::from_slice(&json).expect("preset JSON is a full genesis config");
	TestExternalities::new(config.build_storage().expect("genesis builds"))
}

#[test]
fn dev_and_local_presets_build_and_endow_accounts() {
	for preset in [sp_genesis_builder::DEV_RUNTIME_PRESET, sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET] {
		externalities(preset).execute_with(|| {
			let alice = Sr25519Keyring::Alice.to_account_id();
			assert_eq!(Balances::balance(&alice), genesis_config_presets::ENDOWMENT);
			assert_eq!(Balances::balance(&TreasuryAccount::get()), EXISTENTIAL_DEPOSIT);
			assert_eq!(polkadot_sdk::pallet_sudo::Key::<Runtime>::get(), Some(alice));
		});
	}
	assert_eq!(genesis_config_presets::preset_names().len(), 2);
	assert!(genesis_config_presets::get_preset(&"unknown".into()).is_none());
}

#[test]
fn local_preset_has_two_validators() {
	externalities(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET).execute_with(|| {
		assert_eq!(polkadot_sdk::pallet_aura::Authorities::<Runtime>::get().len(), 2);
		assert_eq!(polkadot_sdk::pallet_grandpa::Pallet::<Runtime>::grandpa_authorities().len(), 2);
	});
}

#[test]
fn metadata_is_v15_or_later() {
	let versions = Runtime::metadata_versions();
	assert!(versions.iter().any(|v| *v >= 15), "versions: {versions:?}");
}
