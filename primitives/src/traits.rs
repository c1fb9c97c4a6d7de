//! What the pallets read of one another. The runtime wires each pallet to the others through
//! these traits, so every pallet can be tested alone with the real pallets it depends on.

use crate::{AdapterId, BaseModelId, DataNetId, ItemId, PromptId, ToolId};
use alloc::vec::Vec;
use polkadot_sdk::sp_core::{sr25519, H256};

/// Read access to DataNets and their contributions.
pub trait DataNetsInspect<AccountId> {
	/// Whether the DataNet exists and is not closing (so a new adapter may name it).
	fn datanet_open(datanet: DataNetId) -> bool;
	/// The contributor and content hash of an accepted item; `None` if unknown or not accepted.
	fn accepted_item(datanet: DataNetId, item: ItemId) -> Option<(AccountId, H256)>;
	/// How many accepted items the DataNet has.
	fn accepted_count(datanet: DataNetId) -> u32;
}

/// Training rewards paid to a DataNet are shared equally by its accepted items.
pub trait TrainingRewards<AccountId, Balance> {
	/// The account that holds unclaimed training rewards of every DataNet.
	fn reward_pool_account() -> AccountId;
	/// Records that `amount` was paid into the pool for `datanet`; `amount` is a multiple of the
	/// DataNet's accepted-item count (see `fees::split_fee`).
	fn note_training_reward(datanet: DataNetId, amount: Balance);
}

/// The registry's view of an adapter that the fee and verification need.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AdapterView<AccountId, Balance> {
	pub owner: AccountId,
	pub base_model: BaseModelId,
	pub weights_hash: H256,
	pub price_per_1k_tokens: Balance,
	/// Training provenance: (DataNet, share in parts per million).
	pub provenance: Vec<(DataNetId, u32)>,
}

/// The registry's view of a prompt template.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PromptView<AccountId, Balance> {
	pub owner: AccountId,
	pub template_hash: H256,
	pub price_per_call: Balance,
}

/// The registry's view of an MCP tool.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ToolView<AccountId, Balance> {
	pub owner: AccountId,
	/// blake2-256 of the tool's canonical JSON definition (name, description, inputSchema).
	pub definition_hash: H256,
	pub price_per_call: Balance,
}

/// Read access to the registry.
pub trait RegistryInspect<AccountId, Balance> {
	/// Whether the base model is registered and active.
	fn base_model_active(id: BaseModelId) -> bool;
	/// A registered adapter.
	fn adapter(id: AdapterId) -> Option<AdapterView<AccountId, Balance>>;
	/// A registered prompt template.
	fn prompt(id: PromptId) -> Option<PromptView<AccountId, Balance>>;
	/// A registered MCP tool.
	fn tool(id: ToolId) -> Option<ToolView<AccountId, Balance>>;
}

/// The workers pallet's view of a worker that may sign receipts.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WorkerView<Balance> {
	pub session_key: sr25519::Public,
	pub compute_price_per_1k_tokens: Balance,
	pub serves: Vec<BaseModelId>,
}

/// Read access to workers.
pub trait WorkersInspect<AccountId, Balance> {
	/// The worker, if it is active with at least the minimum stake.
	fn active_worker(who: &AccountId) -> Option<WorkerView<Balance>>;
}
