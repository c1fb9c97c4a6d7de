//! Combining retrieval hits, span hits and the adapter's training provenance into a receipt's
//! attribution entries.
//!
//! # The rule
//!
//! 1. **Merge.** Hits naming the same `(source, datanet, item)` are added together. Each hit has
//!    a raw weight:
//!    - retrieval: its similarity score, clamped to `[0, 1000]`, in millionths
//!      (`round(score × 10⁶)`; NaN and negative scores count 0). If every retrieved item scores 0,
//!      each counts 1: they were all used as context;
//!    - span: its matched length ([`SpanHit::length`]; [`span_hits`] gives each span's words,
//!      split evenly among the items listed for it);
//!    - training: the adapter's provenance share (ppm) of the DataNet; the entry names no item.
//!
//!    Hits with raw weight 0 are dropped.
//! 2. **Split between sources.** [`AttributionPolicy`] gives each source a share
//!    (default retrieval 50 %, span 30 %, training 20 %). Only sources with at least one hit
//!    and a non-zero share take part; their shares are rescaled to sum to [`PPM`], so a request
//!    without retrieval gives the whole to spans and training. With no such source the
//!    attribution is empty.
//! 3. **Split within a source.** Each source's ppm is shared among its entries in proportion to
//!    their raw weights.
//! 4. **Cap.** If more than [`MAX_ATTRIBUTION_ENTRIES`] entries are left, the largest are kept
//!    (ties: the smaller `(source, datanet, item)` first) and their weights are rescaled to sum
//!    to [`PPM`].
//!
//! Every division is done on integers by the largest-remainder method: each share is rounded
//! down, and the units left over go one each to the largest remainders (ties: the smaller
//! `(source, datanet, item)`, sources ordered Retrieval, Span, Training). Entries that round to 0
//! are dropped. So the weights always sum to exactly [`PPM`], no entry is 0, and the same inputs
//! always give the same entries, listed in ascending `(source, datanet, item)` order.

use std::collections::BTreeMap;

use openledger_primitives::{AttributionEntry, AttributionSource, DataNetId, ItemId, MAX_ATTRIBUTION_ENTRIES, PPM};

use super::spans::Span;

/// An item retrieved as context.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetrievalHit {
	pub datanet: DataNetId,
	pub item: ItemId,
	/// Similarity score (cosine for the default embedder).
	pub score: f32,
}

/// An item containing a verbatim span of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanHit {
	pub datanet: DataNetId,
	pub item: ItemId,
	/// Matched length in any unit, the same for all hits of one call ([`span_hits`] uses words
	/// × [`SPAN_LENGTH_SCALE`]).
	pub length: u64,
}

/// A DataNet's share of the adapter's training provenance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainingShare {
	pub datanet: DataNetId,
	pub share_ppm: u32,
}

/// How the attribution is split between sources: relative shares, any scale (they are rescaled
/// over the sources present). The default is 50 % retrieval, 30 % span, 20 % training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionPolicy {
	pub retrieval: u32,
	pub span: u32,
	pub training: u32,
}

impl Default for AttributionPolicy {
	fn default() -> Self {
		Self { retrieval: 500_000, span: 300_000, training: 200_000 }
	}
}

/// [`span_hits`] multiplies word counts by this (divisible by 1..=16) so that splitting a span
/// among up to 16 items is exact.
pub const SPAN_LENGTH_SCALE: u64 = 720_720;

/// Span hits from found spans: each span's words (× [`SPAN_LENGTH_SCALE`]) split evenly among
/// the items listed for it (rounded down), so text found in many items is not counted many times.
/// Overlapping spans each count their full length.
pub fn span_hits(spans: &[Span]) -> Vec<SpanHit> {
	let mut hits = Vec::new();
	for span in spans {
		if span.items.is_empty() {
			continue;
		}
		let length = span.words as u64 * SPAN_LENGTH_SCALE / span.items.len() as u64;
		hits.extend(span.items.iter().map(|&(datanet, item)| SpanHit { datanet, item, length }));
	}
	hits
}

/// Sort key of an entry: sources in declaration order, then datanet, then item.
type Key = (u8, DataNetId, Option<ItemId>);

fn source_rank(source: AttributionSource) -> u8 {
	match source {
		AttributionSource::Retrieval => 0,
		AttributionSource::Span => 1,
		AttributionSource::Training => 2,
	}
}

fn source_of(rank: u8) -> AttributionSource {
	match rank {
		0 => AttributionSource::Retrieval,
		1 => AttributionSource::Span,
		_ => AttributionSource::Training,
	}
}

/// A retrieval score as an integer weight: millionths of the score clamped to `[0, 1000]`.
pub(crate) fn score_units(score: f32) -> u128 {
	let s = f64::from(score);
	if s.is_nan() || s <= 0.0 {
		return 0;
	}
	(s.min(1000.0) * 1e6).round() as u128
}

/// Splits `total` in proportion to `weights` (not all zero) by the largest-remainder method.
/// Ties in remainder go to the earlier index.
pub(crate) fn apportion(total: u32, weights: &[u128]) -> Vec<u32> {
	let sum: u128 = weights.iter().sum();
	if sum == 0 {
		return vec![0; weights.len()];
	}
	let total = u128::from(total);
	let mut shares: Vec<u32> = weights.iter().map(|&w| (total * w / sum) as u32).collect();
	let given: u128 = shares.iter().map(|&s| u128::from(s)).sum();
	let mut order: Vec<usize> = (0..weights.len()).collect();
	// Largest remainder first; stable sort keeps the earlier index first among equals.
	order.sort_by(|&a, &b| (total * weights[b] % sum).cmp(&(total * weights[a] % sum)));
	for &i in order.iter().take((total - given) as usize) {
		shares[i] += 1;
	}
	shares
}

/// The attribution entries for one request (see the module docs for the rule).
pub fn combine(
	retrieval: &[RetrievalHit],
	spans: &[SpanHit],
	training: &[TrainingShare],
	policy: &AttributionPolicy,
) -> Vec<AttributionEntry> {
	// 1. Merge per source, ordered by key.
	let mut per_source: [BTreeMap<Key, u128>; 3] = Default::default();
	for hit in retrieval {
		*per_source[0].entry((source_rank(AttributionSource::Retrieval), hit.datanet, Some(hit.item))).or_default() += score_units(hit.score);
	}
	if !per_source[0].is_empty() && per_source[0].values().all(|&w| w == 0) {
		per_source[0].values_mut().for_each(|w| *w = 1);
	}
	for hit in spans {
		*per_source[1].entry((source_rank(AttributionSource::Span), hit.datanet, Some(hit.item))).or_default() += u128::from(hit.length);
	}
	for share in training {
		*per_source[2].entry((source_rank(AttributionSource::Training), share.datanet, None)).or_default() += u128::from(share.share_ppm);
	}
	for map in per_source.iter_mut() {
		map.retain(|_, w| *w > 0);
	}

	// 2. Split PPM between the sources present.
	let policy_shares = [policy.retrieval, policy.span, policy.training];
	let active: Vec<usize> = (0..3).filter(|&s| !per_source[s].is_empty() && policy_shares[s] > 0).collect();
	if active.is_empty() {
		return Vec::new();
	}
	let budgets = apportion(PPM, &active.iter().map(|&s| u128::from(policy_shares[s])).collect::<Vec<_>>());

	// 3. Split each source's budget among its entries.
	let mut entries: Vec<(Key, u32)> = Vec::new();
	for (&s, &budget) in active.iter().zip(&budgets) {
		let keys: Vec<Key> = per_source[s].keys().copied().collect();
		let weights: Vec<u128> = per_source[s].values().copied().collect();
		for (key, w) in keys.into_iter().zip(apportion(budget, &weights)) {
			if w > 0 {
				entries.push((key, w));
			}
		}
	}

	// 4. Cap, keeping the largest, and rescale.
	let max = MAX_ATTRIBUTION_ENTRIES as usize;
	if entries.len() > max {
		entries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
		entries.truncate(max);
		entries.sort_by_key(|e| e.0);
		let weights: Vec<u128> = entries.iter().map(|e| u128::from(e.1)).collect();
		for (entry, w) in entries.iter_mut().zip(apportion(PPM, &weights)) {
			entry.1 = w;
		}
	}
	entries.sort_by_key(|e| e.0);
	entries
		.into_iter()
		.map(|((rank, datanet, item), weight_ppm)| AttributionEntry { source: source_of(rank), datanet, item, weight_ppm })
		.collect()
}

#[cfg(test)]
mod tests {
	use super::*;
	use proptest::prelude::*;

	fn r(datanet: u32, item: u32, score: f32) -> RetrievalHit {
		RetrievalHit { datanet, item, score }
	}

	fn total(entries: &[AttributionEntry]) -> u64 {
		entries.iter().map(|e| u64::from(e.weight_ppm)).sum()
	}

	#[test]
	fn empty_when_nothing_to_attribute() {
		let policy = AttributionPolicy::default();
		assert!(combine(&[], &[], &[], &policy).is_empty());
		assert!(combine(&[], &[SpanHit { datanet: 0, item: 0, length: 0 }], &[TrainingShare { datanet: 1, share_ppm: 0 }], &policy)
			.is_empty());
		// A source the policy gives nothing to does not count.
		let no_spans = AttributionPolicy { span: 0, ..policy };
		assert!(combine(&[], &[SpanHit { datanet: 0, item: 0, length: 5 }], &[], &no_spans).is_empty());
	}

	#[test]
	fn default_split_and_rescaling_over_present_sources() {
		let policy = AttributionPolicy::default();
		let entries = combine(
			&[r(0, 1, 0.75), r(0, 2, 0.25)],
			&[SpanHit { datanet: 3, item: 4, length: 10 }],
			&[TrainingShare { datanet: 7, share_ppm: 600_000 }, TrainingShare { datanet: 8, share_ppm: 400_000 }],
			&policy,
		);
		let got: Vec<(AttributionSource, u32, Option<u32>, u32)> =
			entries.iter().map(|e| (e.source, e.datanet, e.item, e.weight_ppm)).collect();
		assert_eq!(
			got,
			vec![
				(AttributionSource::Retrieval, 0, Some(1), 375_000),
				(AttributionSource::Retrieval, 0, Some(2), 125_000),
				(AttributionSource::Span, 3, Some(4), 300_000),
				(AttributionSource::Training, 7, None, 120_000),
				(AttributionSource::Training, 8, None, 80_000),
			]
		);
		// Without spans, retrieval and training share the whole 5:2.
		let entries = combine(&[r(0, 1, 0.5)], &[], &[TrainingShare { datanet: 7, share_ppm: 1 }], &policy);
		assert_eq!(entries.iter().map(|e| e.weight_ppm).collect::<Vec<_>>(), vec![714_286, 285_714]);
		assert_eq!(total(&entries), u64::from(PPM));
	}

	#[test]
	fn duplicates_merge_and_zero_scores_fall_back_to_equal() {
		let policy = AttributionPolicy::default();
		let entries = combine(&[r(0, 1, 0.2), r(0, 1, 0.2), r(0, 2, 0.4)], &[], &[], &policy);
		assert_eq!(entries.len(), 2);
		assert_eq!(entries[0].weight_ppm, 500_000);
		assert_eq!(entries[1].weight_ppm, 500_000);
		// The same item under two sources stays two entries.
		let entries = combine(&[r(0, 1, 0.3)], &[SpanHit { datanet: 0, item: 1, length: 3 }], &[], &policy);
		assert_eq!(entries.len(), 2);
		// All scores zero, negative or NaN: equal split among the retrieved items.
		let entries = combine(&[r(0, 1, 0.0), r(0, 2, -0.3), r(0, 3, f32::NAN)], &[], &[], &policy);
		assert_eq!(entries.iter().map(|e| e.weight_ppm).collect::<Vec<_>>(), vec![333_334, 333_333, 333_333]);
		// One positive score: the others get nothing and are left out.
		let entries = combine(&[r(0, 1, 0.0), r(0, 2, 0.3)], &[], &[], &policy);
		assert_eq!(entries.len(), 1);
		assert_eq!(entries[0].item, Some(2));
		assert_eq!(entries[0].weight_ppm, PPM);
	}

	#[test]
	fn largest_remainder_ties_go_to_the_smaller_key() {
		let policy = AttributionPolicy::default();
		let entries = combine(&[r(5, 1, 0.5), r(2, 9, 0.5), r(2, 3, 0.5)], &[], &[], &policy);
		assert_eq!(
			entries.iter().map(|e| (e.datanet, e.item.unwrap(), e.weight_ppm)).collect::<Vec<_>>(),
			vec![(2, 3, 333_334), (2, 9, 333_333), (5, 1, 333_333)]
		);
	}

	#[test]
	fn caps_at_max_entries_keeping_the_largest() {
		let policy = AttributionPolicy::default();
		let hits: Vec<RetrievalHit> = (0..50).map(|i| r(0, i, (i + 1) as f32 / 100.0)).collect();
		let entries = combine(&hits, &[], &[], &policy);
		assert_eq!(entries.len(), MAX_ATTRIBUTION_ENTRIES as usize);
		assert_eq!(total(&entries), u64::from(PPM));
		// The 32 highest scores are items 18..50.
		assert_eq!(entries.iter().map(|e| e.item.unwrap()).collect::<Vec<_>>(), (18..50).collect::<Vec<_>>());
		assert!(entries.windows(2).all(|w| w[0].weight_ppm <= w[1].weight_ppm));
	}

	#[test]
	fn span_hits_split_a_span_among_its_items() {
		let span = |words, items: Vec<(u32, u32)>| Span {
			start: 0,
			end: 0,
			text: String::new(),
			words,
			tokens: words,
			item_count: items.len(),
			items,
		};
		let hits = span_hits(&[span(12, vec![(0, 1)]), span(9, vec![(0, 1), (0, 2), (1, 0)]), span(8, vec![])]);
		assert_eq!(hits.len(), 4);
		assert_eq!(hits[0].length, 12 * SPAN_LENGTH_SCALE);
		assert_eq!(hits[1].length, 3 * SPAN_LENGTH_SCALE);
		let entries = combine(&[], &hits, &[], &AttributionPolicy::default());
		// Item (0, 1): 12 + 3 of 21 word units; (0, 2) and (1, 0): 3 each.
		assert_eq!(entries.iter().map(|e| e.weight_ppm).collect::<Vec<_>>(), vec![714_286, 142_857, 142_857]);
	}

	fn arb_retrieval() -> impl Strategy<Value = Vec<RetrievalHit>> {
		prop::collection::vec(
			(0u32..4, 0u32..30, prop_oneof![Just(0.0f32), Just(f32::NAN), -1.0f32..1.0, 0.0f32..2000.0])
				.prop_map(|(d, i, s)| r(d, i, s)),
			0..60,
		)
	}

	fn arb_spans() -> impl Strategy<Value = Vec<SpanHit>> {
		prop::collection::vec(
			(0u32..4, 0u32..30, prop_oneof![Just(0u64), 0u64..100, 0u64..u64::MAX])
				.prop_map(|(datanet, item, length)| SpanHit { datanet, item, length }),
			0..60,
		)
	}

	fn arb_training() -> impl Strategy<Value = Vec<TrainingShare>> {
		prop::collection::vec(
			(0u32..8, prop_oneof![Just(0u32), 0u32..=PPM, 0u32..=u32::MAX])
				.prop_map(|(datanet, share_ppm)| TrainingShare { datanet, share_ppm }),
			0..10,
		)
	}

	fn arb_policy() -> impl Strategy<Value = AttributionPolicy> {
		prop_oneof![
			Just(AttributionPolicy::default()),
			(0u32..3, 0u32..3, 0u32..3).prop_map(|(retrieval, span, training)| AttributionPolicy { retrieval, span, training }),
			(0u32..=u32::MAX, 0u32..=u32::MAX, 0u32..=u32::MAX)
				.prop_map(|(retrieval, span, training)| AttributionPolicy { retrieval, span, training }),
		]
	}

	proptest! {
		#![proptest_config(ProptestConfig::with_cases(2000))]

		#[test]
		fn weights_are_exact_capped_merged_and_non_zero(
			retrieval in arb_retrieval(),
			spans in arb_spans(),
			training in arb_training(),
			policy in arb_policy(),
		) {
			let entries = combine(&retrieval, &spans, &training, &policy);
			let anything = (!retrieval.is_empty() && policy.retrieval > 0) ||
				(spans.iter().any(|s| s.length > 0) && policy.span > 0) ||
				(training.iter().any(|t| t.share_ppm > 0) && policy.training > 0);
			prop_assert_eq!(entries.is_empty(), !anything);
			if !entries.is_empty() {
				prop_assert_eq!(total(&entries), u64::from(PPM));
			}
			prop_assert!(entries.len() <= MAX_ATTRIBUTION_ENTRIES as usize);
			prop_assert!(entries.iter().all(|e| e.weight_ppm > 0));
			for e in &entries {
				prop_assert_eq!(e.item.is_none(), e.source == AttributionSource::Training);
			}
			let keys: Vec<Key> = entries.iter().map(|e| (source_rank(e.source), e.datanet, e.item)).collect();
			prop_assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted and merged: {:?}", keys);
			// Deterministic, and independent of the order of the inputs.
			let mut rev_r = retrieval.clone();
			rev_r.reverse();
			let mut rev_s = spans.clone();
			rev_s.reverse();
			let mut rev_t = training.clone();
			rev_t.reverse();
			prop_assert_eq!(combine(&rev_r, &rev_s, &rev_t, &policy), entries);
		}

		#[test]
		fn apportion_is_exact(weights in prop::collection::vec(0u128..u128::from(u64::MAX), 1..50), total in 0u32..=PPM) {
			let shares = apportion(total, &weights);
			if weights.iter().any(|&w| w > 0) {
				prop_assert_eq!(shares.iter().map(|&s| u64::from(s)).sum::<u64>(), u64::from(total));
			}
			let sum: u128 = weights.iter().sum();
			for (s, w) in shares.iter().zip(&weights) {
				// Within one unit of the exact share.
				if sum > 0 {
					let exact_floor = u128::from(total) * w / sum;
					prop_assert!(u128::from(*s) == exact_floor || u128::from(*s) == exact_floor + 1);
				}
			}
		}
	}
}
