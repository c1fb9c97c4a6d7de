//! Storage types of the DataNets pallet.

use crate::Config;
use codec::{Decode, Encode, MaxEncodedLen};
use openledger_primitives::{ContentHash, ItemId};
use polkadot_sdk::{
	frame_support::{traits::fungible::Inspect, BoundedVec},
	frame_system,
};
use scale_info::TypeInfo;

pub type BalanceOf<T> =
	<<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

/// A community dataset.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
#[scale_info(skip_type_params(MaxName, MaxUri, MaxLicense, MaxCurators))]
pub struct DataNet<AccountId, Balance, MaxName, MaxUri, MaxLicense, MaxCurators>
where
	MaxName: polkadot_sdk::frame_support::traits::Get<u32>,
	MaxUri: polkadot_sdk::frame_support::traits::Get<u32>,
	MaxLicense: polkadot_sdk::frame_support::traits::Get<u32>,
	MaxCurators: polkadot_sdk::frame_support::traits::Get<u32>,
{
	pub owner: AccountId,
	pub name: BoundedVec<u8, MaxName>,
	/// blake2-256 of the metadata document found at `metadata_uri`.
	pub metadata_hash: ContentHash,
	pub metadata_uri: BoundedVec<u8, MaxUri>,
	/// An SPDX identifier or licence text reference.
	pub license: BoundedVec<u8, MaxLicense>,
	pub curators: BoundedVec<AccountId, MaxCurators>,
	/// Held from every contributor until the item is curated or withdrawn.
	pub contribution_deposit: Balance,
	/// Held from the owner.
	pub deposit: Balance,
	pub next_item: ItemId,
	/// Items stored now, pending or accepted.
	pub live_items: u32,
	pub accepted_items: u32,
	/// Its owner is closing it: it takes no contributions and accepts nothing more, and anyone
	/// may remove its items (`reap_item`); the last removal removes it and releases `deposit`.
	pub closing: bool,
}

pub type DataNetOf<T> = DataNet<
	<T as frame_system::Config>::AccountId,
	BalanceOf<T>,
	<T as Config>::MaxNameLen,
	<T as Config>::MaxUriLen,
	<T as Config>::MaxLicenseLen,
	<T as Config>::MaxCurators,
>;

/// Where an item stands in curation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
pub enum ContributionStatus {
	Pending,
	Accepted,
}

/// One contributed item.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
pub struct Contribution<AccountId, Balance> {
	pub contributor: AccountId,
	/// blake2-256 of the normalised item text.
	pub content_hash: ContentHash,
	pub bytes: u64,
	pub status: ContributionStatus,
	/// Held from the contributor.
	pub deposit: Balance,
	/// `RewardPerItem` of the DataNet when this item last settled its rewards.
	pub reward_index: Balance,
}

pub type ContributionOf<T> = Contribution<<T as frame_system::Config>::AccountId, BalanceOf<T>>;
