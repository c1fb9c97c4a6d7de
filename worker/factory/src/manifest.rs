//! The training manifest: what an adapter was trained on and how, published beside it. Its
//! DataNet shares are computed from the tokens actually trained on, and anyone holding the
//! DataNets' accepted items can check every entry.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Context, Result};
use openledger_primitives::{ContentHash, DataNetId, ItemId};
use serde::{Deserialize, Serialize};

/// The file's name in an adapter's directory.
pub const MANIFEST_FILE: &str = "training_manifest.json";
/// The `format` field of this version.
pub const MANIFEST_FORMAT: &str = "openledger-training-manifest/1";

/// How an adapter was trained: the flags of `adapter train`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
	pub rank: usize,
	pub alpha: f64,
	/// PEFT's module names (`q_proj` …).
	pub target_modules: Vec<String>,
	pub epochs: usize,
	/// Optimizer updates (from `epochs` unless given).
	pub steps: usize,
	pub learning_rate: f64,
	pub warmup_steps: usize,
	/// Packed sequences per update.
	pub batch_size: usize,
	pub max_seq_len: usize,
	pub weight_decay: f64,
	pub max_grad_norm: f64,
	pub seed: u64,
}

/// The base model the adapter was trained over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModelRef {
	pub name: String,
	pub architecture: String,
	/// blake2-256 of the weights file, `0x`-hex: the registry's hash of the base model.
	pub weights_hash: String,
}

/// One item trained on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestItem {
	pub datanet: DataNetId,
	pub item: ItemId,
	/// The item's content hash, `0x`-hex, as the chain stores it.
	pub hash: String,
	/// Tokens of the item the loss covered over the run's updates (each time it was seen).
	pub tokens: usize,
}

/// A DataNet's part in the training.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataNetShare {
	pub datanet: DataNetId,
	pub items: usize,
	pub tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
	pub format: String,
	pub base_model: BaseModelRef,
	/// blake2-256 of `adapter_model.safetensors`, hex: the hash the adapter is registered by.
	pub adapter_weights_hash: String,
	pub hyperparameters: Hyperparameters,
	pub datanets: Vec<DataNetShare>,
	pub items: Vec<ManifestItem>,
	/// Tokens processed over the whole run (rows of every sequence of every update).
	pub tokens_processed: usize,
	/// Each update's mean loss per trained token.
	pub loss_curve: Vec<f32>,
	/// The projection of the items' gradients stored beside the adapter
	/// (`influence_sketch.safetensors`), where the run made one.
	#[serde(default, skip_serializing_if = "Option::is_none")]
	pub influence_sketch: Option<crate::influence::SketchProjection>,
}

impl Manifest {
	/// The manifest in an adapter's directory.
	pub fn read(adapter_dir: &std::path::Path) -> Result<Self> {
		let path = adapter_dir.join(MANIFEST_FILE);
		let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
		serde_json::from_slice(&bytes).with_context(|| format!("{} is not a training manifest", path.display()))
	}

	/// The DataNets' shares from their items' tokens.
	pub fn shares_of(items: &[ManifestItem]) -> Vec<DataNetShare> {
		let mut by_datanet: BTreeMap<DataNetId, DataNetShare> = BTreeMap::new();
		for item in items {
			let share = by_datanet.entry(item.datanet).or_insert(DataNetShare { datanet: item.datanet, items: 0, tokens: 0 });
			share.items += 1;
			share.tokens += item.tokens;
		}
		by_datanet.into_values().collect()
	}

	/// Checks the manifest against the chain's accepted items of its DataNets (`accepted`:
	/// (content hash, item id) per DataNet): every item it names is accepted with that hash, and
	/// its DataNet shares are the sums of its items.
	pub fn check_items(&self, accepted: &BTreeMap<DataNetId, Vec<(ContentHash, ItemId)>>) -> Result<()> {
		ensure!(self.format == MANIFEST_FORMAT, "the manifest's format `{}` is not {MANIFEST_FORMAT}", self.format);
		ensure!(!self.items.is_empty(), "the manifest names no items");
		let by_id: BTreeMap<DataNetId, HashMap<ItemId, ContentHash>> = accepted
			.iter()
			.map(|(datanet, items)| (*datanet, items.iter().map(|(hash, id)| (*id, *hash)).collect()))
			.collect();
		let mut seen = std::collections::HashSet::new();
		for item in &self.items {
			ensure!(seen.insert((item.datanet, item.item)), "item {} of DataNet {} is listed twice", item.item, item.datanet);
			let Some(on_chain) = by_id.get(&item.datanet).and_then(|items| items.get(&item.item)) else {
				bail!("item {} of DataNet {} is not an accepted item on chain", item.item, item.datanet);
			};
			if format!("{on_chain:?}") != item.hash {
				bail!("item {} of DataNet {} has hash {} on chain, not the manifest's {}", item.item, item.datanet, format!("{on_chain:?}"), item.hash);
			}
		}
		ensure!(Self::shares_of(&self.items) == self.datanets, "the manifest's DataNet shares are not the sums of its items");
		Ok(())
	}

	/// Each DataNet's share in parts per million of the tokens trained on, the largest
	/// remainders rounded up so that they sum to exactly 1,000,000.
	pub fn shares_ppm(&self) -> Vec<(DataNetId, u32)> {
		let total: u128 = self.datanets.iter().map(|d| d.tokens as u128).sum();
		if total == 0 {
			return Vec::new();
		}
		let mut shares: Vec<(DataNetId, u32, u128)> = self
			.datanets
			.iter()
			.map(|d| {
				let exact = d.tokens as u128 * 1_000_000;
				(d.datanet, (exact / total) as u32, exact % total)
			})
			.collect();
		let short = 1_000_000 - shares.iter().map(|s| s.1).sum::<u32>();
		let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
		by_remainder.sort_by(|&a, &b| shares[b].2.cmp(&shares[a].2).then(a.cmp(&b)));
		for &i in by_remainder.iter().take(short as usize) {
			shares[i].1 += 1;
		}
		shares.into_iter().map(|(d, ppm, _)| (d, ppm)).collect()
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn shares_follow_tokens_and_sum_to_a_million() {
		let item = |datanet, tokens| ManifestItem { datanet, item: 0, hash: String::new(), tokens };
		let items = [item(1, 10), item(2, 10), item(2, 5), item(3, 5)];
		let datanets = Manifest::shares_of(&items);
		assert_eq!(datanets.iter().map(|d| (d.datanet, d.items, d.tokens)).collect::<Vec<_>>(), [(1, 1, 10), (2, 2, 15), (3, 1, 5)]);
		let manifest = sample(items.to_vec());
		let ppm = manifest.shares_ppm();
		assert_eq!(ppm, [(1, 333_333), (2, 500_000), (3, 166_667)]);
		assert_eq!(ppm.iter().map(|s| s.1).sum::<u32>(), 1_000_000);
	}

	#[test]
	fn items_are_checked_against_the_accepted_ones() {
		let hash = |b: u8| ContentHash::repeat_byte(b);
		let item = |datanet, item, b| ManifestItem { datanet, item, hash: format!("{:?}", hash(b)), tokens: 5 };
		let items = vec![item(1, 10, 1), item(2, 20, 2)];
		let mut manifest = sample(items.clone());
		let accepted: BTreeMap<_, _> = [(1, vec![(hash(1), 10), (hash(9), 11)]), (2, vec![(hash(2), 20)])].into_iter().collect();
		manifest.check_items(&accepted).unwrap();
		let mut missing = accepted.clone();
		missing.get_mut(&2).unwrap().clear();
		assert!(manifest.check_items(&missing).unwrap_err().to_string().contains("item 20 of DataNet 2 is not an accepted item"));
		let mut other_hash = accepted.clone();
		other_hash.get_mut(&1).unwrap()[0].0 = hash(7);
		assert!(manifest.check_items(&other_hash).unwrap_err().to_string().contains("has hash"));
		let mut twice = manifest.clone();
		twice.items.push(twice.items[0].clone());
		twice.datanets = Manifest::shares_of(&twice.items);
		assert!(twice.check_items(&accepted).unwrap_err().to_string().contains("listed twice"));
		manifest.datanets[0].tokens += 1;
		assert!(manifest.check_items(&accepted).unwrap_err().to_string().contains("not the sums"));
	}

	fn sample(items: Vec<ManifestItem>) -> Manifest {
		Manifest {
			format: MANIFEST_FORMAT.into(),
			base_model: BaseModelRef { name: String::new(), architecture: String::new(), weights_hash: String::new() },
			adapter_weights_hash: String::new(),
			hyperparameters: Hyperparameters {
				rank: 1,
				alpha: 1.0,
				target_modules: vec![],
				epochs: 1,
				steps: 1,
				learning_rate: 0.0,
				warmup_steps: 0,
				batch_size: 1,
				max_seq_len: 8,
				weight_decay: 0.0,
				max_grad_norm: 0.0,
				seed: 0,
			},
			datanets: Manifest::shares_of(&items),
			items,
			tokens_processed: 0,
			loss_curve: vec![],
			influence_sketch: None,
		}
	}
}
