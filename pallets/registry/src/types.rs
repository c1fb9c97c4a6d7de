//! Storage types of the registry pallet.

use crate::Config;
use codec::{Decode, Encode, MaxEncodedLen};
use openledger_primitives::{price::PriceFloor, AdapterId, BaseModelId, ContentHash, DataNetId, PromptId, ToolId};
use polkadot_sdk::{
	frame_support::{
		traits::{fungible::Inspect, Get},
		BoundedVec,
	},
	frame_system,
};
use scale_info::TypeInfo;

pub type BalanceOf<T> =
	<<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

/// An adapter's training provenance: (DataNet, share in parts per million), each DataNet once,
/// every share above zero, the shares summing to at most one million.
pub type Provenance<MaxProvenance> = BoundedVec<(DataNetId, u32), MaxProvenance>;

/// A base model that adapters are trained on and workers serve.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
#[scale_info(skip_type_params(MaxName, MaxArchitecture))]
pub struct BaseModel<MaxName, MaxArchitecture>
where
	MaxName: Get<u32>,
	MaxArchitecture: Get<u32>,
{
	pub name: BoundedVec<u8, MaxName>,
	/// The model family the weights implement, e.g. `llama`.
	pub architecture: BoundedVec<u8, MaxArchitecture>,
	/// blake2-256 of the weights file.
	pub weights_hash: ContentHash,
	/// A retired base model takes no new adapters and is refused in receipts.
	pub active: bool,
}

pub type BaseModelOf<T> = BaseModel<<T as Config>::MaxNameLen, <T as Config>::MaxArchitectureLen>;

/// A LoRA adapter over a base model.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
#[scale_info(skip_type_params(MaxUri, MaxProvenance))]
pub struct Adapter<AccountId, Balance, BlockNumber, MaxUri, MaxProvenance>
where
	MaxUri: Get<u32>,
	MaxProvenance: Get<u32>,
{
	/// Receives the adapter's part of every fee and may change, transfer or retire it.
	pub owner: AccountId,
	/// The account the deposit is held from; it is released to them when the adapter retires,
	/// whoever owns the adapter by then.
	pub depositor: AccountId,
	/// Held from `depositor`.
	pub deposit: Balance,
	pub base_model: BaseModelId,
	/// blake2-256 of `adapter_model.safetensors`.
	pub weights_hash: ContentHash,
	/// blake2-256 of `adapter_config.json`.
	pub config_hash: ContentHash,
	/// The LoRA rank, in `1..=MaxRank`.
	pub rank: u32,
	/// Where the adapter files can be fetched.
	pub uri: BoundedVec<u8, MaxUri>,
	pub provenance: Provenance<MaxProvenance>,
	/// The price set; a rise is charged only `PriceHold` blocks later (see `price_floor`).
	pub price_per_1k_tokens: Balance,
	/// What is charged below the price set while a change is recent.
	pub price_floor: PriceFloor<Balance, BlockNumber>,
}

pub type AdapterOf<T> = Adapter<
	<T as frame_system::Config>::AccountId,
	BalanceOf<T>,
	frame_system::pallet_prelude::BlockNumberFor<T>,
	<T as Config>::MaxUriLen,
	<T as Config>::MaxProvenance,
>;

/// A prompt template.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
#[scale_info(skip_type_params(MaxUri))]
pub struct Prompt<AccountId, Balance, BlockNumber, MaxUri>
where
	MaxUri: Get<u32>,
{
	/// Receives the prompt price of every call and may change, transfer or retire it.
	pub owner: AccountId,
	/// The account the deposit is held from and released to.
	pub depositor: AccountId,
	/// Held from `depositor`.
	pub deposit: Balance,
	/// blake2-256 of the template text.
	pub template_hash: ContentHash,
	/// Where the template can be fetched.
	pub uri: BoundedVec<u8, MaxUri>,
	/// The price set; a rise is charged only `PriceHold` blocks later (see `price_floor`).
	pub price_per_call: Balance,
	/// What is charged below the price set while a change is recent.
	pub price_floor: PriceFloor<Balance, BlockNumber>,
}

pub type PromptOf<T> = Prompt<
	<T as frame_system::Config>::AccountId,
	BalanceOf<T>,
	frame_system::pallet_prelude::BlockNumberFor<T>,
	<T as Config>::MaxUriLen,
>;

/// An MCP tool: a function an MCP server at `endpoint` offers as `name`, whose definition the
/// worker checks against `definition_hash` before offering it to a model, paid per call.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
#[scale_info(skip_type_params(MaxUri, MaxToolName))]
pub struct Tool<AccountId, Balance, BlockNumber, MaxUri, MaxToolName>
where
	MaxUri: Get<u32>,
	MaxToolName: Get<u32>,
{
	/// Receives the tool's price for every call and may change, transfer or retire it.
	pub owner: AccountId,
	/// The account the deposit is held from and released to.
	pub depositor: AccountId,
	/// Held from `depositor`.
	pub deposit: Balance,
	/// The MCP server's URL (Streamable HTTP).
	pub endpoint: BoundedVec<u8, MaxUri>,
	/// The tool's name on that server.
	pub name: BoundedVec<u8, MaxToolName>,
	/// blake2-256 of the tool's canonical JSON definition (name, description, inputSchema).
	pub definition_hash: ContentHash,
	/// The price set; a rise is charged only `PriceHold` blocks later (see `price_floor`).
	pub price_per_call: Balance,
	/// What is charged below the price set while a change is recent.
	pub price_floor: PriceFloor<Balance, BlockNumber>,
}

pub type ToolOf<T> = Tool<
	<T as frame_system::Config>::AccountId,
	BalanceOf<T>,
	frame_system::pallet_prelude::BlockNumberFor<T>,
	<T as Config>::MaxUriLen,
	<T as Config>::MaxToolNameLen,
>;

/// A registration that retires in two steps ([`crate::Retiring`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
pub enum Entry {
	Adapter(AdapterId),
	Prompt(PromptId),
	Tool(ToolId),
}

/// What a registration commitment is for: its first byte in the committed encoding.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
pub enum RegistrationKind {
	/// An adapter, committed with its weights hash.
	Adapter,
	/// A prompt template, committed with its template hash.
	Prompt,
}
