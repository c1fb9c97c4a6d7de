//! The node's services: Aura + GRANDPA on real networks; on a development chain, a block for every
//! transaction and on a timer, each final at once.

use futures::{FutureExt, StreamExt};
use openledger_runtime::{apis::RuntimeApi, opaque::Block, SLOT_DURATION};
use polkadot_sdk::{
	sc_basic_authorship, sc_client_api::{Backend, BlockBackend, StorageProvider},
	sc_consensus, sc_consensus_aura::{self, ImportQueueParams, SlotProportion, StartAuraParams},
	sc_consensus_grandpa::{self, SharedVoterState},
	sc_consensus_manual_seal::{self as manual_seal, consensus::aura::AuraConsensusDataProvider},
	sc_executor, sc_network, sc_offchain,
	sc_service::{self, error::Error as ServiceError, ChainType, Configuration, TaskManager, WarpSyncConfig},
	sc_telemetry::{Telemetry, TelemetryWorker},
	sc_transaction_pool, sc_transaction_pool_api::{OffchainTransactionPoolFactory, TransactionPool},
	sp_consensus_aura::{self, sr25519::AuthorityPair as AuraPair},
	sp_io, sp_runtime, sp_timestamp,
};
use std::{
	sync::{
		atomic::{AtomicU64, Ordering},
		Arc,
	},
	time::Duration,
};

pub type FullClient =
	sc_service::TFullClient<Block, RuntimeApi, sc_executor::WasmExecutor<sp_io::SubstrateHostFunctions>>;
type FullBackend = sc_service::TFullBackend<Block>;
type FullSelectChain = sc_consensus::LongestChain<FullBackend, Block>;
type GrandpaBlockImport =
	sc_consensus_grandpa::GrandpaBlockImport<FullBackend, Block, FullClient, FullSelectChain>;

/// Blocks between GRANDPA justifications kept for syncing nodes.
const GRANDPA_JUSTIFICATION_PERIOD: u32 = 512;

pub type Service = sc_service::PartialComponents<
	FullClient,
	FullBackend,
	FullSelectChain,
	sc_consensus::DefaultImportQueue<Block>,
	sc_transaction_pool::TransactionPoolHandle<Block, FullClient>,
	(Option<(GrandpaBlockImport, sc_consensus_grandpa::LinkHalf<Block, FullClient, FullSelectChain>)>, Option<Telemetry>),
>;

fn is_dev(config: &Configuration) -> bool {
	config.chain_spec.chain_type() == ChainType::Development
}

/// The client, database, pool and import queue: the parts every command needs.
pub fn new_partial(config: &Configuration) -> Result<Service, ServiceError> {
	let telemetry = config
		.telemetry_endpoints
		.clone()
		.filter(|x| !x.is_empty())
		.map(|endpoints| -> Result<_, polkadot_sdk::sc_telemetry::Error> {
			let worker = TelemetryWorker::new(16)?;
			let telemetry = worker.handle().new_telemetry(endpoints);
			Ok((worker, telemetry))
		})
		.transpose()?;

	let executor = sc_service::new_wasm_executor::<sp_io::SubstrateHostFunctions>(&config.executor);
	let (client, backend, keystore_container, task_manager) =
		sc_service::new_full_parts::<Block, RuntimeApi, _>(
			config,
			telemetry.as_ref().map(|(_, telemetry)| telemetry.handle()),
			executor,
			Vec::new(),
		)?;
	let client = Arc::new(client);
	let telemetry = telemetry.map(|(worker, telemetry)| {
		task_manager.spawn_handle().spawn("telemetry", None, worker.run());
		telemetry
	});
	let select_chain = sc_consensus::LongestChain::new(backend.clone());
	// The dev chain seals a block for every transaction the pool imports, one chain with no
	// forks: it keeps the single-state pool, at the command line's default limits. Under instant
	// seal the fork-aware pool's background task has ended ("Essential task `txpool-background`
	// failed", which stops the node) during a burst of transactions at start.
	let pool_options = match is_dev(config) {
		true => sc_transaction_pool::TransactionPoolOptions::new_with_params(
			8192,
			20 * 1024 * 1024,
			None,
			sc_transaction_pool::TransactionPoolType::SingleState,
			true,
			false,
		),
		false => config.transaction_pool.clone(),
	};
	let transaction_pool = Arc::from(
		sc_transaction_pool::Builder::new(
			task_manager.spawn_essential_handle(),
			client.clone(),
			config.role.is_authority().into(),
		)
		.with_options(pool_options)
		.with_prometheus(config.prometheus_registry())
		.build(),
	);

	if is_dev(config) {
		let import_queue = manual_seal::import_queue(
			Box::new(client.clone()),
			&task_manager.spawn_essential_handle(),
			config.prometheus_registry(),
		);
		return Ok(sc_service::PartialComponents {
			client,
			backend,
			task_manager,
			import_queue,
			keystore_container,
			select_chain,
			transaction_pool,
			other: (None, telemetry),
		});
	}

	let (grandpa_block_import, grandpa_link) = sc_consensus_grandpa::block_import(
		client.clone(),
		GRANDPA_JUSTIFICATION_PERIOD,
		&client,
		select_chain.clone(),
		telemetry.as_ref().map(|x| x.handle()),
	)?;
	let cidp_client = client.clone();
	let import_queue = sc_consensus_aura::import_queue::<AuraPair, _, _, _, _, _>(ImportQueueParams {
		block_import: grandpa_block_import.clone(),
		justification_import: Some(Box::new(grandpa_block_import.clone())),
		client: client.clone(),
		create_inherent_data_providers: move |parent_hash, _| {
			let cidp_client = cidp_client.clone();
			async move {
				let slot_duration =
					sc_consensus_aura::standalone::slot_duration_at(&*cidp_client, parent_hash)?;
				let timestamp = sp_timestamp::InherentDataProvider::from_system_time();
				let slot = sp_consensus_aura::inherents::InherentDataProvider::from_timestamp_and_slot_duration(
					*timestamp,
					slot_duration,
				);
				Ok((slot, timestamp))
			}
		},
		spawner: &task_manager.spawn_essential_handle(),
		registry: config.prometheus_registry(),
		check_for_equivocation: Default::default(),
		telemetry: telemetry.as_ref().map(|x| x.handle()),
		compatibility_mode: Default::default(),
	})?;

	Ok(sc_service::PartialComponents {
		client,
		backend,
		task_manager,
		import_queue,
		keystore_container,
		select_chain,
		transaction_pool,
		other: (Some((grandpa_block_import, grandpa_link)), telemetry),
	})
}

/// Timestamps for development blocks: wall-clock time, but at least one slot after the previous
/// block, because Aura in the runtime wants a new slot in every block and dev blocks come faster
/// than slots.
struct DevClock {
	last: AtomicU64,
}

impl DevClock {
	/// Continues from the best block's timestamp: a dev chain that made blocks faster than slots
	/// is ahead of the wall clock, and a restarted node must not go back in time (Aura panics).
	fn resume(client: &FullClient) -> Self {
		let best = polkadot_sdk::sp_blockchain::HeaderBackend::info(client).best_hash;
		let key = [sp_io::hashing::twox_128(b"Timestamp"), sp_io::hashing::twox_128(b"Now")].concat();
		let last = client
			.storage(best, &polkadot_sdk::sp_core::storage::StorageKey(key))
			.ok()
			.flatten()
			.and_then(|data| <[u8; 8]>::try_from(data.0.as_slice()).ok())
			.map_or(0, u64::from_le_bytes);
		Self { last: AtomicU64::new(last) }
	}

	fn next(&self) -> sp_timestamp::Timestamp {
		let now = sp_timestamp::Timestamp::current().as_millis();
		let mut last = self.last.load(Ordering::SeqCst);
		loop {
			let next = now.max(last + SLOT_DURATION) / SLOT_DURATION * SLOT_DURATION;
			match self.last.compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst) {
				Ok(_) => return next.into(),
				Err(seen) => last = seen,
			}
		}
	}
}

/// Builds and starts a full node.
pub fn new_full<N: sc_network::NetworkBackend<Block, <Block as sp_runtime::traits::Block>::Hash>>(
	config: Configuration,
	dev_block_time: Duration,
) -> Result<TaskManager, ServiceError> {
	let dev = is_dev(&config);
	let sc_service::PartialComponents {
		client,
		backend,
		mut task_manager,
		import_queue,
		keystore_container,
		select_chain,
		transaction_pool,
		other: (grandpa, mut telemetry),
	} = new_partial(&config)?;

	let mut net_config = sc_network::config::FullNetworkConfiguration::<
		Block,
		<Block as sp_runtime::traits::Block>::Hash,
		N,
	>::new(&config.network, config.prometheus_registry().cloned());
	let metrics = N::register_notification_metrics(config.prometheus_registry());
	let peer_store_handle = net_config.peer_store_handle();
	let grandpa_protocol_name = sc_consensus_grandpa::protocol_standard_name(
		&client.block_hash(0).ok().flatten().expect("the genesis block exists"),
		&config.chain_spec,
	);
	let (grandpa_protocol_config, grandpa_notification_service) =
		sc_consensus_grandpa::grandpa_peers_set_config::<_, N>(
			grandpa_protocol_name.clone(),
			metrics.clone(),
			peer_store_handle,
		);
	net_config.add_notification_protocol(grandpa_protocol_config);

	let warp_sync_config = grandpa.as_ref().map(|(_, link)| {
		WarpSyncConfig::WithProvider(Arc::new(sc_consensus_grandpa::warp_proof::NetworkProvider::new(
			backend.clone(),
			link.shared_authority_set().clone(),
			Vec::default(),
		)))
	});

	let (network, system_rpc_tx, tx_handler_controller, sync_service, _bitswap) =
		sc_service::build_network(sc_service::BuildNetworkParams {
			config: &config,
			net_config,
			client: client.clone(),
			transaction_pool: transaction_pool.clone(),
			spawn_handle: task_manager.spawn_handle(),
			spawn_essential_handle: task_manager.spawn_essential_handle(),
			import_queue,
			block_announce_validator_builder: None,
			warp_sync_config,
			block_relay: None,
			metrics,
			gap_sync_body_policy: None,
		})?;

	if config.offchain_worker.enabled {
		let offchain_workers = sc_offchain::OffchainWorkers::new(sc_offchain::OffchainWorkerOptions {
			runtime_api_provider: client.clone(),
			is_validator: config.role.is_authority(),
			keystore: Some(keystore_container.keystore()),
			offchain_db: backend.offchain_storage(),
			transaction_pool: Some(OffchainTransactionPoolFactory::new(transaction_pool.clone())),
			network_provider: Arc::new(network.clone()),
			enable_http_requests: true,
			custom_extensions: |_| vec![],
		})?;
		task_manager.spawn_handle().spawn(
			"offchain-workers-runner",
			"offchain-worker",
			offchain_workers.run(client.clone(), task_manager.spawn_handle()).boxed(),
		);
	}

	let role = config.role;
	let force_authoring = config.force_authoring;
	let name = config.network.node_name.clone();
	let enable_grandpa = !config.disable_grandpa;
	let prometheus_registry = config.prometheus_registry().cloned();

	let rpc_builder = {
		let client = client.clone();
		let pool = transaction_pool.clone();
		Box::new(move |_| {
			crate::rpc::create_full(crate::rpc::FullDeps { client: client.clone(), pool: pool.clone() })
				.map_err(Into::into)
		})
	};

	sc_service::spawn_tasks(sc_service::SpawnTasksParams {
		network: Arc::new(network.clone()),
		client: client.clone(),
		keystore: keystore_container.keystore(),
		task_manager: &mut task_manager,
		transaction_pool: transaction_pool.clone(),
		rpc_builder,
		backend,
		system_rpc_tx,
		tx_handler_controller,
		sync_service: sync_service.clone(),
		config,
		telemetry: telemetry.as_mut(),
		tracing_execute_block: None,
	})?;

	let proposer_factory = sc_basic_authorship::ProposerFactory::new(
		task_manager.spawn_handle(),
		client.clone(),
		transaction_pool.clone(),
		prometheus_registry.as_ref(),
		telemetry.as_ref().map(|x| x.handle()),
	);

	if dev {
		// A block for every transaction the pool imports, and one per `dev_block_time` so that
		// time-based logic (expiries) moves on; each is finalized at once, so clients that wait
		// for finality never hang.
		let on_transaction = transaction_pool.import_notification_stream().map(|_| ());
		let on_timer = futures::stream::unfold((), move |()| async move {
			tokio::time::sleep(dev_block_time).await;
			Some(((), ()))
		})
		.boxed();
		let commands_stream = futures::stream::select(on_transaction, on_timer).map(|()| {
			manual_seal::EngineCommand::SealNewBlock {
				create_empty: true,
				finalize: true,
				parent_hash: None,
				sender: None,
			}
		});
		let clock = Arc::new(DevClock::resume(&client));
		let authorship = manual_seal::run_manual_seal(manual_seal::ManualSealParams {
			block_import: client.clone(),
			env: proposer_factory,
			client: client.clone(),
			pool: transaction_pool,
			commands_stream,
			select_chain,
			consensus_data_provider: Some(Box::new(AuraConsensusDataProvider::new(client.clone()))),
			create_inherent_data_providers: move |_, ()| {
				let clock = clock.clone();
				async move { Ok(sp_timestamp::InherentDataProvider::new(clock.next())) }
			},
		});
		task_manager
			.spawn_essential_handle()
			.spawn_blocking("instant-seal", Some("block-authoring"), authorship);
		return Ok(task_manager);
	}

	let (block_import, grandpa_link) =
		grandpa.ok_or_else(|| ServiceError::Other("GRANDPA is set up for live chains".into()))?;

	if role.is_authority() {
		let slot_duration = sc_consensus_aura::slot_duration(&*client)?;
		let aura = sc_consensus_aura::start_aura::<AuraPair, _, _, _, _, _, _, _, _, _, _>(
			StartAuraParams {
				slot_duration,
				client,
				select_chain,
				block_import,
				proposer_factory,
				create_inherent_data_providers: move |_, ()| async move {
					let timestamp = sp_timestamp::InherentDataProvider::from_system_time();
					let slot = sp_consensus_aura::inherents::InherentDataProvider::from_timestamp_and_slot_duration(
						*timestamp,
						slot_duration,
					);
					Ok((slot, timestamp))
				},
				force_authoring,
				backoff_authoring_blocks: Option::<()>::None,
				keystore: keystore_container.keystore(),
				sync_oracle: sync_service.clone(),
				justification_sync_link: sync_service.clone(),
				block_proposal_slot_portion: SlotProportion::new(2f32 / 3f32),
				max_block_proposal_slot_portion: None,
				telemetry: telemetry.as_ref().map(|x| x.handle()),
				compatibility_mode: Default::default(),
			},
		)?;
		task_manager
			.spawn_essential_handle()
			.spawn_blocking("aura", Some("block-authoring"), aura);
	}

	if enable_grandpa {
		let keystore = if role.is_authority() { Some(keystore_container.keystore()) } else { None };
		let grandpa_config = sc_consensus_grandpa::GrandpaParams {
			config: sc_consensus_grandpa::Config {
				gossip_duration: Duration::from_millis(333),
				justification_generation_period: GRANDPA_JUSTIFICATION_PERIOD,
				name: Some(name),
				observer_enabled: false,
				keystore,
				local_role: role,
				telemetry: telemetry.as_ref().map(|x| x.handle()),
				protocol_name: grandpa_protocol_name,
			},
			link: grandpa_link,
			network,
			sync: Arc::new(sync_service),
			notification_service: grandpa_notification_service,
			voting_rule: sc_consensus_grandpa::VotingRulesBuilder::default().build(),
			prometheus_registry,
			shared_voter_state: SharedVoterState::empty(),
			telemetry: telemetry.as_ref().map(|x| x.handle()),
			offchain_tx_pool_factory: OffchainTransactionPoolFactory::new(transaction_pool),
		};
		task_manager.spawn_essential_handle().spawn_blocking(
			"grandpa-voter",
			None,
			sc_consensus_grandpa::run_grandpa_voter(grandpa_config)?,
		);
	}

	Ok(task_manager)
}
