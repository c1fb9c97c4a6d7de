//! Genesis presets: `dev` (one validator, Alice) and `local` (Alice and Bob validating).

use crate::{
	configs::TreasuryAccount, AccountId, AttributionConfig, BalancesConfig, RuntimeGenesisConfig,
	SudoConfig, EXISTENTIAL_DEPOSIT, MILLI_UNIT, UNIT,
};
use alloc::{vec, vec::Vec};
use polkadot_sdk::{
	pallet_aura, pallet_grandpa,
	sp_consensus_aura::sr25519::AuthorityId as AuraId,
	sp_consensus_grandpa::AuthorityId as GrandpaId,
	sp_genesis_builder::{self, PresetId},
	sp_keyring::{Ed25519Keyring, Sr25519Keyring},
	sp_runtime::Permill,
};
use serde_json::Value;

/// What each endowed development account starts with.
pub const ENDOWMENT: u128 = 1_000_000 * UNIT;

/// Builds a genesis config from validators, endowed accounts and the sudo key.
pub fn testnet_genesis(
	authorities: Vec<(AuraId, GrandpaId)>,
	endowed: Vec<AccountId>,
	root: AccountId,
) -> Value {
	let config = RuntimeGenesisConfig {
		balances: BalancesConfig {
			balances: endowed
				.into_iter()
				.map(|account| (account, ENDOWMENT))
				// The treasury receives amounts below the existential deposit: keep it alive.
				.chain([(TreasuryAccount::get(), EXISTENTIAL_DEPOSIT)])
				.collect(),
			..Default::default()
		},
		aura: pallet_aura::GenesisConfig {
			authorities: authorities.iter().map(|(aura, _)| aura.clone()).collect(),
		},
		grandpa: pallet_grandpa::GenesisConfig {
			authorities: authorities.iter().map(|(_, grandpa)| (grandpa.clone(), 1)).collect(),
			..Default::default()
		},
		sudo: SudoConfig { key: Some(root) },
		attribution: AttributionConfig {
			protocol_share: Permill::from_percent(5),
			data_share: Permill::from_percent(30),
			retrieval_price: MILLI_UNIT,
		},
		..Default::default()
	};
	serde_json::to_value(config).expect("the genesis config serialises to JSON")
}

fn dev_accounts() -> Vec<AccountId> {
	vec![
		Sr25519Keyring::Alice.to_account_id(),
		Sr25519Keyring::Bob.to_account_id(),
		Sr25519Keyring::Charlie.to_account_id(),
		Sr25519Keyring::Dave.to_account_id(),
		Sr25519Keyring::Eve.to_account_id(),
		Sr25519Keyring::Ferdie.to_account_id(),
		Sr25519Keyring::AliceStash.to_account_id(),
		Sr25519Keyring::BobStash.to_account_id(),
	]
}

/// One validator (Alice), the development accounts endowed, Alice as sudo.
pub fn development_config_genesis() -> Value {
	testnet_genesis(
		vec![(Sr25519Keyring::Alice.public().into(), Ed25519Keyring::Alice.public().into())],
		dev_accounts(),
		Sr25519Keyring::Alice.to_account_id(),
	)
}

/// Alice and Bob validating, the development accounts endowed, Alice as sudo.
pub fn local_config_genesis() -> Value {
	testnet_genesis(
		vec![
			(Sr25519Keyring::Alice.public().into(), Ed25519Keyring::Alice.public().into()),
			(Sr25519Keyring::Bob.public().into(), Ed25519Keyring::Bob.public().into()),
		],
		dev_accounts(),
		Sr25519Keyring::Alice.to_account_id(),
	)
}

/// The JSON of the preset named `id`.
pub fn get_preset(id: &PresetId) -> Option<Vec<u8>> {
	let patch = match id.as_ref() {
		sp_genesis_builder::DEV_RUNTIME_PRESET => development_config_genesis(),
		sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET => local_config_genesis(),
		_ => return None,
	};
	Some(serde_json::to_string(&patch).expect("JSON values serialise").into_bytes())
}

pub fn preset_names() -> Vec<PresetId> {
	vec![
		PresetId::from(sp_genesis_builder::DEV_RUNTIME_PRESET),
		PresetId::from(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET),
	]
}
