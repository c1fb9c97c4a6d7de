//! The rotary embedding's angles, computed for the positions of each step instead of kept as
//! tables over the whole context: a 131,072-position Llama 3's cos and sin tables took 67 MB
//! (twice that with the CPU loops' copies), Gemma 3's with its second base 100 MB, where a step
//! needs `head_dim / 2` cosines and sines per token.

use super::LlamaConfig;

/// The inverse frequencies of the model's rope bases.
pub struct Rope {
	global: Vec<f32>,
	/// The sliding-window layers' own base (Gemma 3).
	local: Option<Vec<f32>>,
}

/// Cosines and sines of one base, a row of `head_dim / 2` for each row of a step's tokens.
pub struct Angles {
	pub cos: Vec<f32>,
	pub sin: Vec<f32>,
	half: usize,
}

/// The angles of a step's rows for the global base and, where the model has one, the local.
pub struct StepAngles {
	pub global: Angles,
	local: Option<Angles>,
}

impl Rope {
	pub fn new(config: &LlamaConfig) -> Self {
		Self { global: config.rope_inverse_frequencies(), local: config.local_rope_inverse_frequencies() }
	}

	/// The angles of every row of a step, whose `spans` are (first row, rows, first position)
	/// in row order.
	pub fn step(&self, spans: &[(usize, usize, usize)]) -> StepAngles {
		let positions = || spans.iter().flat_map(|&(_, n, pos)| pos..pos + n);
		StepAngles { global: Angles::new(&self.global, positions()), local: self.local.as_ref().map(|f| Angles::new(f, positions())) }
	}
}

impl Angles {
	/// The angles of `positions`, a row each.
	pub fn new(inv_freq: &[f32], positions: impl Iterator<Item = usize>) -> Self {
		let (mut cos, mut sin) = (Vec::new(), Vec::new());
		for p in positions {
			for w in inv_freq {
				let angle = p as f32 * w;
				cos.push(angle.cos());
				sin.push(angle.sin());
			}
		}
		Self { cos, sin, half: inv_freq.len() }
	}

	/// The cosines and sines of rows `start..start + n`.
	pub fn rows(&self, start: usize, n: usize) -> (&[f32], &[f32]) {
		let range = start * self.half..(start + n) * self.half;
		(&self.cos[range.clone()], &self.sin[range])
	}

	pub fn half(&self) -> usize {
		self.half
	}
}

impl StepAngles {
	/// The angles of a layer: the local base's in a sliding-window layer where there is one.
	pub fn of_layer(&self, windowed: bool) -> &Angles {
		match (&self.local, windowed) {
			(Some(local), true) => local,
			_ => &self.global,
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn rows_follow_the_positions_of_each_span() {
		let inv_freq = [1.0, 0.5];
		// Two spans: rows 0..2 at positions 5 and 6, row 2 at position 0.
		let angles = Angles::new(&inv_freq, [5, 6, 0].into_iter());
		let (cos, sin) = angles.rows(1, 2);
		assert_eq!(cos, &[6f32.cos(), 3f32.cos(), 1.0, 1.0]);
		assert_eq!(sin, &[6f32.sin(), 3f32.sin(), 0.0, 0.0]);
		let rope = Rope { global: inv_freq.to_vec(), local: Some(vec![0.25, 0.125]) };
		let step = rope.step(&[(0, 2, 5), (2, 1, 0)]);
		assert_eq!(step.global.cos, angles.cos);
		assert_eq!(step.of_layer(true).rows(0, 1).1, &[1.25f32.sin(), 0.625f32.sin()]);
		assert_eq!(step.of_layer(false).half(), 2);
	}
}
