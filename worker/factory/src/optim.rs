//! AdamW as PyTorch computes it, the learning-rate schedule Hugging Face's trainer uses by
//! default for LoRA (linear warm-up, then cosine decay to zero), and clipping by global norm.

use serde::{Deserialize, Serialize};

/// AdamW's state over a flat parameter vector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
	pub beta1: f64,
	pub beta2: f64,
	pub eps: f64,
	pub weight_decay: f64,
	/// Updates taken so far.
	pub step: u64,
	#[serde(skip)]
	pub m: Vec<f32>,
	#[serde(skip)]
	pub v: Vec<f32>,
}

impl AdamW {
	pub fn new(len: usize, weight_decay: f64) -> Self {
		Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step: 0, m: vec![0.0; len], v: vec![0.0; len] }
	}

	/// One update of `params` by `grads` at learning rate `lr` (`torch.optim.AdamW`'s order:
	/// decoupled decay, then the bias-corrected step).
	pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
		assert!(params.len() == grads.len() && params.len() == self.m.len());
		self.step += 1;
		let t = self.step as i32;
		let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
		let step_size = (lr / (1.0 - self.beta1.powi(t))) as f32;
		let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt() as f32;
		let decay = (1.0 - lr * self.weight_decay) as f32;
		let eps = self.eps as f32;
		for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(self.m.iter_mut()).zip(self.v.iter_mut()) {
			*p *= decay;
			*m = b1 * *m + (1.0 - b1) * g;
			*v = b2 * *v + (1.0 - b2) * g * g;
			*p -= step_size * *m / (v.sqrt() / bias2_sqrt + eps);
		}
	}
}

/// The learning rate of update `step` (from 0) of `total`: rising linearly over `warmup`, then
/// falling along half a cosine to zero.
pub fn learning_rate(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
	if step < warmup {
		return peak * (step + 1) as f64 / warmup as f64;
	}
	let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
	peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_global_norm(grads: &mut [f32], max_norm: f64) -> f64 {
	let norm = grads.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt();
	if max_norm > 0.0 && norm > max_norm {
		let scale = (max_norm / (norm + 1e-6)) as f32;
		grads.iter_mut().for_each(|g| *g *= scale);
	}
	norm
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn adamw_first_step_moves_each_weight_by_the_learning_rate() {
		// With bias correction, the first step is lr · sign(g) (up to eps), after the decay.
		let mut adam = AdamW::new(3, 0.1);
		let mut p = vec![1.0f32, -2.0, 0.5];
		adam.update(&mut p, &[0.3, -4.0, 1e-3], 0.01);
		let want = [1.0 * 0.999 - 0.01, -2.0 * 0.999 + 0.01, 0.5 * 0.999 - 0.01];
		for (g, w) in p.iter().zip(want) {
			assert!((g - w).abs() < 1e-5, "{g} vs {w}");
		}
		assert_eq!(adam.step, 1);
	}

	#[test]
	fn schedule_warms_up_then_decays_to_zero() {
		let lr = |s| learning_rate(s, 10, 2, 1.0);
		assert_eq!((lr(0), lr(1)), (0.5, 1.0));
		assert!((lr(2) - 1.0).abs() < 1e-12);
		assert!(lr(6) < lr(5) && lr(5) < lr(3));
		assert!(lr(10) < 1e-12);
	}

	#[test]
	fn clipping_bounds_the_norm() {
		let mut g = vec![3.0f32, 4.0];
		assert_eq!(clip_global_norm(&mut g, 1.0), 5.0);
		assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
		let mut small = vec![0.3f32, 0.4];
		clip_global_norm(&mut small, 1.0);
		assert_eq!(small, [0.3, 0.4]);
	}
}
