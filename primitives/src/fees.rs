//! The fee of a receipt and its split, as a pure function so the runtime, the worker and anyone
//! re-checking a payout compute the same numbers.
//!
//! `fee = tokens × (worker rate + adapter rate) / 1000 + prompt price + retrieval price × items
//! + Σ tool price × calls`, each term rounded down. Of every part the protocol share goes to the
//! treasury; each tool's remainder goes to its owner; of the adapter part's remainder the data share goes to the adapter's training DataNets (by provenance share,
//! then equally per accepted item); the retrieval part's remainder goes to the contributors of
//! the attributed items by weight. Every rounding remainder goes to the treasury, so the payouts
//! always sum to the fee exactly.

use crate::{DataNetId, ItemId, ToolId, PPM};
use alloc::vec::Vec;
use polkadot_sdk::sp_arithmetic::{
	traits::AtLeast32BitUnsigned,
	Permill,
};

/// Who receives a part of a fee. The runtime maps each to an account.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub enum Payee {
	Worker,
	AdapterOwner,
	PromptOwner,
	/// The owner of an MCP tool the request called.
	ToolOwner(ToolId),
	/// The training-reward pool of a DataNet, shared equally by its accepted items.
	TrainingPool(DataNetId),
	/// The contributor of an attributed item.
	Contributor(DataNetId, ItemId),
	Treasury,
}

/// A DataNet that trained the adapter: its provenance share and how many accepted items it has.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TrainingSource {
	pub datanet: DataNetId,
	pub share_ppm: u32,
	pub accepted_items: u32,
}

/// An attributed item and its weight (entries naming the same item already summed).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WeightedItem {
	pub datanet: DataNetId,
	pub item: ItemId,
	pub weight_ppm: u32,
}

/// An MCP tool a request called: its calls that succeeded and its price per call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ToolCharge<Balance> {
	pub tool: ToolId,
	pub calls: u32,
	pub price_per_call: Balance,
}

/// Everything the fee depends on, all read from chain state except the token counts, items and
/// tool calls.
#[derive(Clone, Debug)]
pub struct FeeInputs<'a, Balance> {
	pub tokens: u64,
	pub worker_rate_per_1k: Balance,
	/// Zero when the request used no adapter.
	pub adapter_rate_per_1k: Balance,
	/// Zero when the request used no prompt template.
	pub prompt_price: Balance,
	pub retrieval_price: Balance,
	pub items: &'a [WeightedItem],
	pub training: &'a [TrainingSource],
	pub tools: &'a [ToolCharge<Balance>],
	pub protocol_share: Permill,
	pub data_share: Permill,
}

/// A fee and who gets what. `payouts` sums to `fee` exactly; zero payouts are left out.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FeeSplit<Balance> {
	pub fee: Balance,
	pub payouts: Vec<(Payee, Balance)>,
}

/// Why a fee could not be computed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FeeError {
	/// An intermediate product did not fit the balance type.
	Overflow,
}

fn per_thousand<B: AtLeast32BitUnsigned + Copy>(tokens: u64, rate: B) -> Result<B, FeeError> {
	let tokens = B::try_from(tokens).map_err(|_| FeeError::Overflow)?;
	Ok(tokens.checked_mul(&rate).ok_or(FeeError::Overflow)? / B::from(1000u32))
}

/// `amount × numerator / denominator`, rounded down; `denominator` must be non-zero.
fn portion<B: AtLeast32BitUnsigned + Copy>(amount: B, numerator: u64, denominator: u64) -> B {
	// Split `amount` to avoid overflowing: amount = q·d + r, so amount·n/d = q·n + r·n/d.
	let d = B::try_from(denominator).unwrap_or_else(|_| B::max_value());
	let n = B::try_from(numerator).unwrap_or_else(|_| B::max_value());
	let q = amount / d;
	let r = amount % d;
	q.saturating_mul(n).saturating_add(r.saturating_mul(n) / d)
}

/// Computes the fee of one receipt and splits it.
pub fn split_fee<B: AtLeast32BitUnsigned + Copy>(
	inputs: &FeeInputs<'_, B>,
) -> Result<FeeSplit<B>, FeeError> {
	let worker_part = per_thousand(inputs.tokens, inputs.worker_rate_per_1k)?;
	let adapter_part = per_thousand(inputs.tokens, inputs.adapter_rate_per_1k)?;
	let retrieval_part = inputs
		.retrieval_price
		.checked_mul(&B::from(inputs.items.len() as u32))
		.ok_or(FeeError::Overflow)?;
	let mut tool_parts: Vec<(ToolId, B)> = Vec::with_capacity(inputs.tools.len());
	for charge in inputs.tools {
		let part = charge.price_per_call.checked_mul(&B::from(charge.calls)).ok_or(FeeError::Overflow)?;
		tool_parts.push((charge.tool, part));
	}
	let fee = tool_parts
		.iter()
		.try_fold(worker_part, |f, (_, part)| f.checked_add(part))
		.and_then(|f| f.checked_add(&adapter_part))
		.and_then(|f| f.checked_add(&inputs.prompt_price))
		.and_then(|f| f.checked_add(&retrieval_part))
		.ok_or(FeeError::Overflow)?;

	let mut payouts: Vec<(Payee, B)> = Vec::new();
	let mut pay = |payee: Payee, amount: B| {
		if !amount.is_zero() {
			payouts.push((payee, amount));
		}
	};
	let after_protocol = |part: B| part - inputs.protocol_share.mul_floor(part);

	pay(Payee::Worker, after_protocol(worker_part));
	pay(Payee::PromptOwner, after_protocol(inputs.prompt_price));
	for (tool, part) in tool_parts {
		pay(Payee::ToolOwner(tool), after_protocol(part));
	}

	let adapter_net = after_protocol(adapter_part);
	let data_part = inputs.data_share.mul_floor(adapter_net);
	let mut training_paid = B::zero();
	// Shares are capped so they never sum past 100 % (the registry refuses such provenance).
	let mut remaining_ppm = PPM;
	let mut allocated_ppm = 0u32;
	for source in inputs.training {
		let share_ppm = source.share_ppm.min(remaining_ppm);
		remaining_ppm -= share_ppm;
		allocated_ppm += share_ppm;
		if source.accepted_items == 0 {
			continue;
		}
		let share = portion(data_part, u64::from(share_ppm), u64::from(PPM));
		// Only a multiple of the item count enters the pool, so every item's reward is exact.
		let per_item = share / B::from(source.accepted_items);
		let credited = per_item * B::from(source.accepted_items);
		training_paid += credited;
		pay(Payee::TrainingPool(source.datanet), credited);
	}
	// Provenance shares below 100 % leave the rest of the data part with the adapter owner;
	// remainders of DataNets without accepted items or of rounding go to the treasury below.
	let unallocated_ppm = PPM - allocated_ppm;
	let owner_data_part = portion(data_part, u64::from(unallocated_ppm), u64::from(PPM));
	pay(Payee::AdapterOwner, adapter_net - data_part + owner_data_part);
	debug_assert!(training_paid + owner_data_part <= data_part);

	let retrieval_net = after_protocol(retrieval_part);
	let total_weight: u64 = inputs.items.iter().map(|i| u64::from(i.weight_ppm)).sum();
	if total_weight > 0 {
		for item in inputs.items {
			pay(
				Payee::Contributor(item.datanet, item.item),
				portion(retrieval_net, u64::from(item.weight_ppm), total_weight),
			);
		}
	}

	// Everything not paid above — the protocol share and every rounding remainder.
	let paid = payouts.iter().fold(B::zero(), |sum, (_, amount)| sum + *amount);
	if fee > paid {
		payouts.push((Payee::Treasury, fee - paid));
	}
	Ok(FeeSplit { fee, payouts })
}

/// The most a receipt can cost before its token count and attributed items are known: what a
/// worker holds from the payer's budget when it accepts a request, and how it caps the tokens
/// that budget pays for. `max_fee(t)` is never below [`split_fee`]'s fee for `t` tokens and at
/// most `max_items` items, since `split_fee` rounds each of its terms down.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FeeLimit<B> {
	/// The parts that do not depend on tokens: the prompt price, retrieval at the most items and
	/// the most the tool calls can cost.
	pub fixed: B,
	/// Worker and adapter rate per 1000 tokens.
	pub rate_per_1k: B,
}

impl<B: AtLeast32BitUnsigned + Copy> FeeLimit<B> {
	pub fn new(worker_rate_per_1k: B, adapter_rate_per_1k: B, prompt_price: B, retrieval_price: B, max_items: u32) -> Self {
		Self {
			fixed: prompt_price.saturating_add(retrieval_price.saturating_mul(B::from(max_items))),
			rate_per_1k: worker_rate_per_1k.saturating_add(adapter_rate_per_1k),
		}
	}

	/// The same limit, with tool calls that may cost up to `tool_cost` more.
	pub fn with_tool_cost(self, tool_cost: B) -> Self {
		Self { fixed: self.fixed.saturating_add(tool_cost), ..self }
	}

	/// The most a receipt for `tokens` tokens (prompt and completion) can cost; the balance
	/// type's maximum when that does not fit.
	pub fn max_fee(&self, tokens: u64) -> B {
		B::try_from(tokens)
			.ok()
			.and_then(|t| t.checked_mul(&self.rate_per_1k))
			.map_or_else(B::max_value, |product| self.fixed.saturating_add(product / B::from(1000u32)))
	}

	/// The most tokens a fee within `budget` pays for: `None` when `budget` does not cover the
	/// fixed parts, `u64::MAX` when tokens are free. Rounded down, so `max_fee` of the answer is
	/// within `budget`.
	pub fn max_tokens(&self, budget: B) -> Option<u64> {
		let left = budget.checked_sub(&self.fixed)?;
		if self.rate_per_1k.is_zero() {
			return Some(u64::MAX);
		}
		// left × 1000 / rate, without overflowing: left = q·rate + r.
		let (q, r) = (left / self.rate_per_1k, left % self.rate_per_1k);
		let thousand = B::from(1000u32);
		let tokens = q.saturating_mul(thousand).saturating_add(r.saturating_mul(thousand) / self.rate_per_1k);
		Some(tokens.try_into().unwrap_or(u64::MAX))
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn inputs<'a>(items: &'a [WeightedItem], training: &'a [TrainingSource]) -> FeeInputs<'a, u128> {
		FeeInputs {
			tokens: 1_500,
			worker_rate_per_1k: 1_000,
			adapter_rate_per_1k: 2_000,
			prompt_price: 100,
			retrieval_price: 50,
			items,
			training,
			tools: &[],
			protocol_share: Permill::from_percent(10),
			data_share: Permill::from_percent(50),
		}
	}

	fn amount(split: &FeeSplit<u128>, payee: Payee) -> u128 {
		split.payouts.iter().filter(|(p, _)| *p == payee).map(|(_, a)| *a).sum()
	}

	#[test]
	fn worked_example_matches_docs() {
		let items = [
			WeightedItem { datanet: 0, item: 1, weight_ppm: 750_000 },
			WeightedItem { datanet: 0, item: 2, weight_ppm: 250_000 },
		];
		let training = [TrainingSource { datanet: 0, share_ppm: 600_000, accepted_items: 7 }];
		let split = split_fee(&inputs(&items, &training)).unwrap();
		// 1500 × 1000 / 1000 + 1500 × 2000 / 1000 + 100 + 2 × 50
		assert_eq!(split.fee, 1_500 + 3_000 + 100 + 100);
		assert_eq!(amount(&split, Payee::Worker), 1_350);
		assert_eq!(amount(&split, Payee::PromptOwner), 90);
		// adapter 3000 → 2700 after protocol; data part 1350; 60 % = 810 → 805 (7 × 115) to the pool
		assert_eq!(amount(&split, Payee::TrainingPool(0)), 805);
		// owner: 2700 − 1350 + 40 % of 1350 = 1890
		assert_eq!(amount(&split, Payee::AdapterOwner), 1_890);
		// retrieval 100 → 90: 67 and 22
		assert_eq!(amount(&split, Payee::Contributor(0, 1)), 67);
		assert_eq!(amount(&split, Payee::Contributor(0, 2)), 22);
		// protocol 150 + 300 + 10 + 10, training rounding 5, retrieval rounding 1
		assert_eq!(amount(&split, Payee::Treasury), 470 + 5 + 1);
		assert_eq!(split.payouts.iter().map(|(_, a)| a).sum::<u128>(), split.fee);
	}

	#[test]
	fn each_tool_owner_gets_price_times_calls_less_the_protocol_share() {
		let tools = [
			ToolCharge { tool: 7, calls: 3, price_per_call: 1_000u128 },
			ToolCharge { tool: 9, calls: 1, price_per_call: 33 },
		];
		let without = split_fee(&inputs(&[], &[])).unwrap();
		let split = split_fee(&FeeInputs { tools: &tools, ..inputs(&[], &[]) }).unwrap();
		assert_eq!(split.fee, without.fee + 3_000 + 33);
		assert_eq!(amount(&split, Payee::ToolOwner(7)), 2_700);
		// 10 % of 33 is 3.3, floored: 30 to the owner, 3 to the treasury.
		assert_eq!(amount(&split, Payee::ToolOwner(9)), 30);
		assert_eq!(amount(&split, Payee::Treasury), amount(&without, Payee::Treasury) + 300 + 3);
		assert_eq!(split.payouts.iter().map(|(_, a)| a).sum::<u128>(), split.fee);
		let limit = FeeLimit::new(1_000u128, 2_000, 100, 50, 0).with_tool_cost(3_033);
		assert!(split.fee <= limit.max_fee(1_500));
		let huge = [ToolCharge { tool: 1, calls: 2, price_per_call: u128::MAX / 2 + 1 }];
		assert_eq!(split_fee(&FeeInputs { tools: &huge, ..inputs(&[], &[]) }), Err(FeeError::Overflow));
	}

	#[test]
	fn datanet_without_accepted_items_pays_treasury() {
		let training = [TrainingSource { datanet: 3, share_ppm: PPM, accepted_items: 0 }];
		let split = split_fee(&inputs(&[], &training)).unwrap();
		assert_eq!(amount(&split, Payee::TrainingPool(3)), 0);
		assert_eq!(amount(&split, Payee::AdapterOwner), 1_350);
		assert_eq!(split.payouts.iter().map(|(_, a)| a).sum::<u128>(), split.fee);
	}

	#[test]
	fn overflow_is_an_error_not_a_wrap() {
		let mut i = inputs(&[], &[]);
		i.worker_rate_per_1k = u128::MAX;
		assert_eq!(split_fee(&i), Err(FeeError::Overflow));
	}

	#[test]
	fn the_fee_limit_bounds_every_fee_and_the_tokens_it_allows_fit_the_budget() {
		let item = WeightedItem { datanet: 0, item: 1, weight_ppm: PPM };
		let rates = [0u128, 1, 7, 999, 1_000, 1_001, 123_456_789, 10u128.pow(20)];
		for &worker in &rates {
			for &adapter in &rates {
				for &prompt in &[0u128, 1, 10u128.pow(18)] {
					for &retrieval in &[0u128, 3, 10u128.pow(16)] {
						let limit = FeeLimit::new(worker, adapter, prompt, retrieval, 4);
						for tokens in [0u64, 1, 999, 1_000, 1_001, 4_096, 1 << 40] {
							for count in 0..=4 {
								let items = vec![item; count];
								let mut i = inputs(&items, &[]);
								(i.tokens, i.worker_rate_per_1k, i.adapter_rate_per_1k) = (tokens, worker, adapter);
								(i.prompt_price, i.retrieval_price) = (prompt, retrieval);
								let fee = split_fee(&i).unwrap().fee;
								assert!(fee <= limit.max_fee(tokens), "{fee} > {:?} at {tokens}", limit);
							}
						}
						for budget in [0u128, 1, 999, 10u128.pow(18), 10u128.pow(22), u128::MAX] {
							match limit.max_tokens(budget) {
								None => assert!(budget < limit.fixed),
								Some(u64::MAX) if limit.rate_per_1k == 0 => assert!(limit.fixed <= budget),
								Some(tokens) => {
									assert!(limit.max_fee(tokens) <= budget, "{tokens} tokens cost more than {budget}");
									// Tight: at 1000 per 1k or more, two more tokens cost more than the budget.
									if limit.rate_per_1k >= 1000 && tokens < u64::MAX - 2 && budget < u128::MAX / 2 {
										assert!(limit.max_fee(tokens + 2) > budget, "{tokens} tokens leave room in {budget}");
									}
								},
							}
						}
					}
				}
			}
		}
	}
}
