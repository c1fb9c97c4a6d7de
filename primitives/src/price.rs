//! Prices that a signed receipt cannot see rise.
//!
//! The fee of a receipt is computed from on-chain prices when it settles, up to
//! `MaxReceiptLifetime` blocks after the worker signed it. Were a price change to apply at once,
//! an adapter owner (or a worker) could raise a price between a request and its settlement and
//! charge payers who pay by allowance more than they were quoted. So after every change the
//! lowest price in effect over the last `hold` blocks is what is charged, for `hold` blocks: a
//! rise applies to receipts settled `hold` blocks later, a fall at once. With `hold` at least the
//! receipt lifetime, no receipt that expires within a lifetime of the block it was priced in (as
//! the worker sets it) is charged more than the prices of that block. The chain cannot see when a
//! receipt was signed: a worker dating its own receipts further ahead could still charge its own
//! raised price to an allowance, no more than a dishonest worker can already take by inflating
//! its token counts.

use codec::{Decode, Encode, MaxEncodedLen};
use polkadot_sdk::sp_arithmetic::traits::Saturating;
use scale_info::TypeInfo;

/// The part of a price's history that is still charged: the lowest price in effect since
/// `until - hold`, charged until `until` when below the price set.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Encode, Decode, MaxEncodedLen, TypeInfo)]
pub struct PriceFloor<Balance, BlockNumber> {
	pub price: Balance,
	pub until: BlockNumber,
}

impl<Balance: Copy + Ord, BlockNumber: Copy + Ord + Saturating> PriceFloor<Balance, BlockNumber> {
	/// What a receipt settled at `now` is charged when the price set is `current`.
	pub fn charged(&self, current: Balance, now: BlockNumber) -> Balance {
		if now < self.until {
			self.price.min(current)
		} else {
			current
		}
	}

	/// Sets `price` to `new` at `now`, keeping what is charged below it for `hold` blocks
	/// (setting the same price again changes nothing).
	pub fn set(&mut self, price: &mut Balance, new: Balance, now: BlockNumber, hold: BlockNumber) {
		if new == *price {
			return;
		}
		self.price = self.charged(*price, now).min(new);
		self.until = now.saturating_add(hold);
		*price = new;
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	/// Every sequence of changes over a few prices and blocks: the price charged at a block is
	/// never above any price in effect in the `hold` blocks before it (so never above what a
	/// receipt signed then was quoted), and is the price set once it has not changed for `hold`
	/// blocks.
	#[test]
	fn no_receipt_is_charged_above_its_quote_and_a_settled_price_is_charged_as_set() {
		const HOLD: u32 = 3;
		const BLOCKS: u32 = 8;
		let prices = [1u32, 5, 9];
		// Each block either keeps the price or sets one of `prices`: 4^8 histories.
		for history in 0..4u32.pow(BLOCKS) {
			let mut current = 5u32;
			let mut floor = PriceFloor::<u32, u32>::default();
			// `set[b + 1]`: the price at the end of block `b`, what a worker signing then quotes.
			let mut set: Vec<u32> = vec![current];
			let mut code = history;
			for now in 0..BLOCKS {
				let choice = code % 4;
				code /= 4;
				if choice > 0 {
					let new = prices[choice as usize - 1];
					floor.set(&mut current, new, now, HOLD);
				}
				set.push(current);
				// A receipt settled at `now` was signed at `now - HOLD` at the earliest.
				let quoted = &set[(now + 1).saturating_sub(HOLD) as usize..=(now + 1) as usize];
				let charged = floor.charged(current, now);
				assert!(quoted.iter().all(|&q| charged <= q), "history {history:o}, block {now}: {charged} > a quote in {quoted:?}");
				if now >= HOLD && set[(now + 1 - HOLD) as usize..].iter().all(|&p| p == current) {
					assert_eq!(charged, current, "history {history:o}, block {now}: unchanged for {HOLD} blocks");
				}
			}
		}
	}
}
