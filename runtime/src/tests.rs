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

/// The whole flow through the runtime's own configuration: a DataNet with an accepted item, a
/// base model, an adapter trained on the DataNet, a prompt, a staked worker and a payer; one
/// receipt settles, the payer's credit drops by the fee and everyone else gains exactly it.
#[test]
fn receipt_settles_under_the_runtime_configuration() {
	use crate::{Attribution, DataNets, Registry, RuntimeEvent, RuntimeOrigin, System, Workers, UNIT};
	use openledger_primitives::{
		content_hash, item_hash, AttributionEntry, AttributionSource, Receipt, SignedReceipt,
	};
	use pallet_registry::RegistrationKind;
	use polkadot_sdk::{
		frame_support::{assert_ok, traits::fungible::InspectHold, BoundedVec},
		sp_core::{sr25519, Pair},
	};

	externalities(sp_genesis_builder::DEV_RUNTIME_PRESET).execute_with(|| {
		System::set_block_number(1);
		let [payer, owner, contributor, creator, worker] = [
			Sr25519Keyring::Alice,
			Sr25519Keyring::Bob,
			Sr25519Keyring::Charlie,
			Sr25519Keyring::Dave,
			Sr25519Keyring::Eve,
		]
		.map(|k| k.to_account_id());
		let signed = |who: &crate::AccountId| RuntimeOrigin::signed(who.clone());
		let session = sr25519::Pair::from_string("//EveSession", None).unwrap();

		assert_ok!(DataNets::create_datanet(signed(&owner), b"docs".to_vec(), content_hash(b"m"), vec![], vec![], UNIT / 100));
		assert_ok!(DataNets::contribute(signed(&contributor), 0, item_hash("OpenLedger pays contributors."), 29));
		assert_ok!(DataNets::accept(signed(&owner), 0, 0));
		assert_ok!(Registry::register_base_model(RuntimeOrigin::root(), b"SmolLM2-135M".to_vec(), b"llama".to_vec(), content_hash(b"gguf")));
		let salt = [0; 32];
		Registry::commit_for_test(&creator, RegistrationKind::Adapter, &content_hash(b"lora"), &salt);
		assert_ok!(Registry::register_adapter(signed(&creator), 0, content_hash(b"lora"), content_hash(b"cfg"), 16, vec![], vec![(0, 1_000_000)], UNIT / 1_000, salt));
		Registry::commit_for_test(&creator, RegistrationKind::Prompt, &content_hash(b"tpl"), &salt);
		assert_ok!(Registry::register_prompt(signed(&creator), content_hash(b"tpl"), vec![], UNIT / 100, salt));
		assert_ok!(Workers::register(signed(&worker), session.public(), b"http://127.0.0.1:8080".to_vec(), vec![0], UNIT / 1_000, crate::configs::MinStake::get()));
		assert_ok!(Attribution::deposit(signed(&payer), 100 * UNIT));
		assert_ok!(Attribution::set_allowance(signed(&payer), worker.clone(), 10 * UNIT));

		let receipt = Receipt {
			worker: worker.clone(),
			payer: payer.clone(),
			request_hash: content_hash(b"request 1"),
			output_hash: content_hash(b"output"),
			base_model: 0,
			adapter: Some((0, content_hash(b"lora"))),
			prompt: Some((0, content_hash(b"tpl"))),
			prompt_tokens: 120,
			completion_tokens: 80,
			attribution: BoundedVec::truncate_from(vec![
				AttributionEntry { source: AttributionSource::Training, datanet: 0, item: None, weight_ppm: 300_000 },
				AttributionEntry { source: AttributionSource::Retrieval, datanet: 0, item: Some(0), weight_ppm: 700_000 },
			]),
			tools: Default::default(),
			expires_at: 100,
		};
		let genesis = System::block_hash(0);
		let signature = session.sign(&receipt.signing_payload(&genesis));
		let accounts = [&payer, &owner, &contributor, &creator, &worker, &TreasuryAccount::get(), &DataNets::reward_pool()]
			.map(|a| a.clone());
		let before = accounts.clone().map(|a| Balances::total_balance(&a));
		let issuance = Balances::total_issuance();
		let credit_before = Balances::balance_on_hold(&pallet_attribution::HoldReason::Credit.into(), &payer);

		assert_ok!(Attribution::submit_receipts(signed(&worker), BoundedVec::truncate_from(vec![SignedReceipt { receipt, signature, voucher: None }])));

		let fee = System::events()
			.into_iter()
			.find_map(|e| match e.event {
				RuntimeEvent::Attribution(pallet_attribution::Event::ReceiptSettled { fee, .. }) => Some(fee),
				_ => None,
			})
			.expect("the receipt settled");
		// 200 tokens at 0.001 + 0.001 OPEN per 1k, a 0.01 OPEN prompt, one item at 0.001 OPEN.
		assert_eq!(fee, 200 * (UNIT / 1_000) * 2 / 1_000 + UNIT / 100 + UNIT / 1_000);
		let credit_after = Balances::balance_on_hold(&pallet_attribution::HoldReason::Credit.into(), &payer);
		assert_eq!(credit_before - credit_after, fee);
		let after = accounts.map(|a| Balances::total_balance(&a));
		let gained: u128 = before.iter().zip(&after).skip(1).map(|(b, a)| a - b).sum();
		assert_eq!(gained, fee);
		assert_eq!(Balances::total_issuance(), issuance);
		assert!(after[6] > before[6], "the DataNet's pool received the training share");
		// Every pallet's invariants hold under the real configuration, the credit total with them.
		#[cfg(feature = "try-runtime")]
		{
			use polkadot_sdk::frame_support::traits::{TryState, TryStateSelect};
			crate::AllPalletsWithSystem::try_state(System::block_number(), TryStateSelect::All)
				.expect("every pallet's invariants hold");
		}
	});
}
