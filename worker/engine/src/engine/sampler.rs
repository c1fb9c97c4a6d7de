//! Picks each next token from a row of logits: the top one (greedy), or one drawn at the
//! request's temperature after its top-k and top-p cuts, from a generator seeded per request, so a
//! seed gives the same text again.

use std::cmp::Ordering;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::types::SamplingParams;

/// Below this temperature, or this `top_p`, only the top token can be drawn: sampling is greedy
/// (dividing by a vanishing temperature would overflow, and a vanishing `top_p` keeps one token).
const GREEDY_TEMPERATURE: f64 = 1e-7;
const GREEDY_TOP_P: f64 = 1e-6;

pub(super) struct Sampler {
	rule: Rule,
	rng: StdRng,
}

enum Rule {
	Greedy,
	Draw { temperature: f64, top_k: Option<usize>, top_p: Option<f64> },
}

impl Sampler {
	pub(super) fn new(params: &SamplingParams) -> Self {
		let greedy = params.temperature.is_nan() ||
			params.temperature < GREEDY_TEMPERATURE ||
			params.top_p.is_some_and(|p| p < GREEDY_TOP_P);
		let rule = if greedy {
			Rule::Greedy
		} else {
			Rule::Draw {
				temperature: params.temperature,
				top_k: params.top_k.filter(|&k| k > 0),
				top_p: params.top_p.filter(|&p| p < 1.0),
			}
		};
		Self { rule, rng: StdRng::seed_from_u64(params.seed) }
	}

	/// The next token. `logits` is one row, one value per vocabulary entry (not empty).
	pub(super) fn sample(&mut self, logits: &[f32]) -> u32 {
		let Rule::Draw { temperature, top_k, top_p } = self.rule else { return argmax(logits) };
		// Candidates: every token, or the k most likely; sorted by likelihood when top-p must
		// cut them (ties by id, so the order does not depend on the sort).
		let mut candidates: Vec<u32> = (0..logits.len() as u32).collect();
		let by_logit = |a: &u32, b: &u32| descending(logits[*a as usize], logits[*b as usize]).then(a.cmp(b));
		if let Some(k) = top_k.filter(|&k| k < candidates.len()) {
			candidates.select_nth_unstable_by(k - 1, by_logit);
			candidates.truncate(k);
		}
		if top_p.is_some() {
			candidates.sort_unstable_by(by_logit);
		}
		// Softmax at the temperature, relative to the largest logit so nothing overflows.
		let max = candidates.iter().map(|&i| logits[i as usize]).fold(f32::NEG_INFINITY, f32::max);
		if !max.is_finite() {
			return argmax(logits);
		}
		let weights: Vec<f64> =
			candidates.iter().map(|&i| ((f64::from(logits[i as usize]) - f64::from(max)) / temperature).exp()).collect();
		let total: f64 = weights.iter().sum();
		// Top-p keeps the fewest most likely tokens whose probability reaches p.
		let kept = match top_p {
			Some(p) => {
				let mut mass = 0.0;
				weights.iter().position(|w| {
					mass += w / total;
					mass >= p
				})
				.map_or(weights.len(), |last| last + 1)
			},
			None => weights.len(),
		};
		let mass: f64 = weights[..kept].iter().sum();
		let mut x = self.rng.random::<f64>() * mass;
		for (i, w) in weights[..kept].iter().enumerate() {
			if x < *w {
				return candidates[i];
			}
			x -= w;
		}
		// Rounding left x a hair above the last weight.
		candidates[kept - 1]
	}
}

/// The model's log-probability of `token` and of the `top` most likely tokens (most likely
/// first, ties by id) in one row of raw logits: its log-softmax at temperature 1.
pub(super) fn logprobs(logits: &[f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
	let max = logits.iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
	let total: f64 = logits.iter().filter(|l| !l.is_nan()).map(|&l| f64::from(l - max).exp()).sum();
	let log_z = f64::from(max) + total.ln();
	let logprob = |id: u32| (f64::from(logits[id as usize]) - log_z) as f32;
	let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
	let by_logit = |a: &u32, b: &u32| descending(logits[*a as usize], logits[*b as usize]).then(a.cmp(b));
	let top = top.min(ids.len());
	if top > 0 && top < ids.len() {
		ids.select_nth_unstable_by(top - 1, by_logit);
	}
	ids.truncate(top);
	ids.sort_unstable_by(by_logit);
	(logprob(token), ids.into_iter().map(|id| (id, logprob(id))).collect())
}

/// Larger logits first; NaN last.
fn descending(a: f32, b: f32) -> Ordering {
	b.partial_cmp(&a).unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

/// The first of the largest logits.
fn argmax(logits: &[f32]) -> u32 {
	let mut best = 0;
	for (i, &l) in logits.iter().enumerate() {
		if descending(l, logits[best]) == Ordering::Less {
			best = i;
		}
	}
	best as u32
}

#[cfg(test)]
mod tests {
	use super::*;

	fn params(temperature: f64, top_k: Option<usize>, top_p: Option<f64>, seed: u64) -> SamplingParams {
		SamplingParams { temperature, top_p, top_k, seed }
	}

	/// How often each token is drawn in `n` draws with one sampler.
	fn histogram(p: &SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
		let mut sampler = Sampler::new(p);
		let mut counts = vec![0; logits.len()];
		for _ in 0..n {
			counts[sampler.sample(logits) as usize] += 1;
		}
		counts
	}

	/// A temperature or `top_p` small enough to break floating-point sampling picks the top
	/// token, like greedy decoding, for any seed; ordinary values still sample.
	#[test]
	fn vanishing_temperature_or_top_p_samples_the_top_token() {
		let logits = [1.0f32, 7.5, 7.0, -3.0];
		for seed in 0..20 {
			for p in [
				params(1e-39, None, None, seed),
				params(1e-8, None, None, seed),
				params(0.0, None, None, seed),
				params(f64::NAN, None, None, seed),
				params(1.0, None, Some(1e-46), seed),
				params(2.0, None, Some(1e-7), seed),
			] {
				assert_eq!(Sampler::new(&p).sample(&logits), 1, "{:?}/{:?}", p.temperature, p.top_p);
			}
		}
		let sampled: std::collections::HashSet<u32> =
			(0..50).map(|seed| Sampler::new(&params(1.0, None, None, seed)).sample(&logits)).collect();
		assert!(sampled.contains(&2), "temperature 1 still samples the runner-up");
	}

	#[test]
	fn draws_follow_the_softmax_at_the_temperature() {
		// Probabilities at temperature 1: e^0 : e^ln2 : e^ln4 = 1 : 2 : 4.
		let logits = [0.0f32, 2f32.ln(), 4f32.ln()];
		let counts = histogram(&params(1.0, None, None, 7), &logits, 70_000);
		for (token, expected) in [(0, 10_000.0), (1, 20_000.0), (2, 40_000.0)] {
			let got = counts[token] as f64;
			assert!((got - expected).abs() < expected * 0.05, "token {token}: {got} draws, about {expected} expected");
		}
		// Temperature 2 flattens them to 1 : √2 : 2.
		let counts = histogram(&params(2.0, None, None, 7), &logits, 70_000);
		let ratio = counts[2] as f64 / counts[0] as f64;
		assert!((ratio - 2.0).abs() < 0.15, "{ratio}");
	}

	#[test]
	fn top_k_and_top_p_cut_the_unlikely_tokens() {
		let logits = [0.0f32, 2f32.ln(), 4f32.ln(), 8f32.ln()]; // 1 : 2 : 4 : 8 of 15
		let counts = histogram(&params(1.0, Some(2), None, 3), &logits, 20_000);
		assert_eq!((counts[0], counts[1]), (0, 0), "{counts:?}");
		assert!(counts[2] > 0 && counts[3] > counts[2], "{counts:?}");
		// 8/15 < 0.6 ≤ 12/15: the top two.
		let counts = histogram(&params(1.0, None, Some(0.6), 3), &logits, 20_000);
		assert_eq!((counts[0], counts[1]), (0, 0), "{counts:?}");
		// 0.5 ≤ 8/15: the top one alone.
		let counts = histogram(&params(1.0, None, Some(0.5), 3), &logits, 1_000);
		assert_eq!(counts[3], 1_000);
		// Both: top-k first, then top-p over what is left (8/12 ≥ 0.6).
		let counts = histogram(&params(1.0, Some(2), Some(0.6), 3), &logits, 1_000);
		assert_eq!(counts[3], 1_000);
	}

	#[test]
	fn a_seed_draws_the_same_tokens_again() {
		let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
		let draw = |seed| {
			let mut sampler = Sampler::new(&params(0.8, Some(50), Some(0.95), seed));
			(0..64).map(|_| sampler.sample(&logits)).collect::<Vec<_>>()
		};
		assert_eq!(draw(11), draw(11));
		assert_ne!(draw(11), draw(12));
	}

	#[test]
	fn logprobs_are_the_log_softmax_with_the_most_likely_first() {
		let logits = [0.0f32, 2f32.ln(), 4f32.ln(), 8f32.ln(), f32::NEG_INFINITY]; // 1 : 2 : 4 : 8 of 15
		let (chosen, top) = logprobs(&logits, 1, 3);
		assert!((chosen - (2.0f32 / 15.0).ln()).abs() < 1e-6, "{chosen}");
		let expected = [(3, 8.0f32 / 15.0), (2, 4.0 / 15.0), (1, 2.0 / 15.0)];
		assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [3, 2, 1]);
		for ((_, got), (_, p)) in top.iter().zip(expected) {
			assert!((got - p.ln()).abs() < 1e-6, "{got} vs {}", p.ln());
		}
		assert_eq!(logprobs(&logits, 4, 0), (f32::NEG_INFINITY, Vec::new()), "a masked-out token");
		assert_eq!(logprobs(&logits, 0, 9).1.len(), 5, "no more than the vocabulary");
		// Large logits do not overflow.
		let (big, _) = logprobs(&[1000.0, 1000.0], 0, 0);
		assert!((big - 0.5f32.ln()).abs() < 1e-6, "{big}");
	}

	#[test]
	fn greedy_takes_the_first_largest_and_ignores_nan() {
		let mut greedy = Sampler::new(&params(0.0, None, None, 0));
		assert_eq!(greedy.sample(&[1.0, 3.0, 3.0, 2.0]), 1);
		assert_eq!(greedy.sample(&[f32::NAN, 1.0, f32::NAN]), 1);
		assert_eq!(greedy.sample(&[f32::NEG_INFINITY, -1.0]), 1);
	}
}
