//! The elementwise pieces of a decoder layer, each with its backward: RMS norm, the rotary
//! embedding, the MLP's gate, and causal attention within each packed item. Rows are tokens,
//! row-major; a backward adds into its input's gradient where several paths meet.

use rayon::prelude::*;

use crate::linalg::{matmul, Mat, Out};

/// Rows per task of the elementwise passes: enough work to be worth a hand-off.
const ROWS_PER_TASK: usize = 16;

/// `y = x / rms(x) · w` per row of `dim`; returns each row's 1 / rms for the backward.
pub fn rms_norm(x: &[f32], w: &[f32], dim: usize, eps: f32, y: &mut [f32]) -> Vec<f32> {
	x.par_chunks_exact(dim)
		.zip(y.par_chunks_exact_mut(dim))
		.with_min_len(ROWS_PER_TASK)
		.map(|(x, y)| {
			let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / dim as f32 + eps).sqrt();
			for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
				*y = x * inv * w;
			}
			inv
		})
		.collect()
}

/// Adds to `dx` the gradient through [`rms_norm`] of `dy`:
/// `r·w·dy − x · r³/dim · Σ(w·dy·x)` with `r` = 1 / rms.
pub fn rms_norm_backward(x: &[f32], w: &[f32], inv_rms: &[f32], dy: &[f32], dim: usize, dx: &mut [f32]) {
	x.par_chunks_exact(dim)
		.zip(dy.par_chunks_exact(dim))
		.zip(dx.par_chunks_exact_mut(dim))
		.zip(inv_rms.par_iter())
		.with_min_len(ROWS_PER_TASK)
		.for_each(|(((x, dy), dx), &r)| {
			let dot: f32 = x.iter().zip(dy).zip(w).map(|((x, dy), w)| x * dy * w).sum();
			let c = r * r * r * dot / dim as f32;
			for (((dx, x), dy), w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
				*dx += r * w * dy - x * c;
			}
		});
}

/// Rotates every head of each row by its position's angles (`cos`, `sin`: `head_dim / 2` per
/// row); `inverse` rotates back, which is also the rotation's backward.
pub fn rope(x: &mut [f32], width: usize, head_dim: usize, cos: &[f32], sin: &[f32], interleaved: bool, inverse: bool) {
	let half = head_dim / 2;
	x.par_chunks_exact_mut(width)
		.zip(cos.par_chunks_exact(half))
		.zip(sin.par_chunks_exact(half))
		.with_min_len(ROWS_PER_TASK)
		.for_each_init(
			|| vec![0f32; half],
			|neg, ((row, cos), sin)| {
				let sin = match inverse {
					true => {
						neg.iter_mut().zip(sin).for_each(|(n, s)| *n = -s);
						&neg[..]
					},
					false => sin,
				};
				openledger_engine::model::rope_in_place(row, head_dim, cos, sin, interleaved);
			},
		);
}

/// The MLP's gate: SiLU, or GELU's tanh approximation (Gemma).
#[derive(Clone, Copy)]
pub enum Gate {
	Silu,
	Gelu,
}

const GELU_C: f32 = 0.797_884_6; // √(2/π)

/// Elements per task of the gate's passes.
const ELEMENTS_PER_TASK: usize = 8 * 1024;

impl Gate {
	/// `act = gate(g) · u`.
	pub fn forward(self, g: &[f32], u: &[f32], act: &mut [f32]) {
		act.par_chunks_mut(ELEMENTS_PER_TASK).zip(g.par_chunks(ELEMENTS_PER_TASK)).zip(u.par_chunks(ELEMENTS_PER_TASK)).for_each(
			|((act, g), u)| {
				for ((a, &g), &u) in act.iter_mut().zip(g).zip(u) {
					*a = self.value(g) * u;
				}
			},
		);
	}

	/// From `dact`, the gradients of `g` and `u` (overwritten).
	pub fn backward(self, g: &[f32], u: &[f32], dact: &[f32], dg: &mut [f32], du: &mut [f32]) {
		let n = ELEMENTS_PER_TASK;
		dg.par_chunks_mut(n).zip(du.par_chunks_mut(n)).zip(g.par_chunks(n)).zip(u.par_chunks(n)).zip(dact.par_chunks(n)).for_each(
			|((((dg, du), g), u), dact)| {
				for ((((dg, du), &g), &u), &da) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dact) {
					*du = da * self.value(g);
					*dg = da * u * self.derivative(g);
				}
			},
		);
	}

	fn value(self, g: f32) -> f32 {
		match self {
			Self::Silu => g / (1.0 + (-g).exp()),
			Self::Gelu => 0.5 * g * (1.0 + (GELU_C * (g + 0.044_715 * g * g * g)).tanh()),
		}
	}

	fn derivative(self, g: f32) -> f32 {
		match self {
			Self::Silu => {
				let s = 1.0 / (1.0 + (-g).exp());
				s * (1.0 + g * (1.0 - s))
			},
			Self::Gelu => {
				let t = (GELU_C * (g + 0.044_715 * g * g * g)).tanh();
				0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044_715 * g * g)
			},
		}
	}
}

/// The shape of a layer's attention.
#[derive(Clone, Copy)]
pub struct Heads {
	pub query_heads: usize,
	pub kv_heads: usize,
	pub head_dim: usize,
	pub scale: f32,
	/// Attend only to the last `window` positions (a token's own included).
	pub window: Option<usize>,
}

impl Heads {
	fn q_width(&self) -> usize {
		self.query_heads * self.head_dim
	}
	fn kv_width(&self) -> usize {
		self.kv_heads * self.head_dim
	}
	fn group(&self) -> usize {
		self.query_heads / self.kv_heads
	}
}

/// Causal attention of each item (`segments`: row ranges of the packed rows, whose tokens see
/// only their own item) over rotated `q` `[T, heads · hd]`, `k`, `v` `[T, kv_heads · hd]`.
/// Returns the output `[T, heads · hd]` and the attention probabilities, per segment and head
/// (`len × len` each, in segment-major order), for the backward.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], segments: &[(usize, usize)], heads: &Heads) -> (Vec<f32>, Vec<Vec<f32>>) {
	let rows: usize = segments.iter().map(|s| s.1).sum();
	let (qw, kw, hd) = (heads.q_width(), heads.kv_width(), heads.head_dim);
	let mut out = vec![0f32; rows * qw];
	// Each (segment, head) is independent; heads of a segment write disjoint columns.
	let jobs: Vec<((usize, usize), usize)> =
		segments.iter().flat_map(|&seg| (0..heads.query_heads).map(move |h| (seg, h))).collect();
	let results: Vec<(Vec<f32>, Vec<f32>)> = jobs
		.par_iter()
		.map(|&((start, len), h)| {
			let g = h / heads.group();
			let mut p = vec![0f32; len * len];
			matmul(
				Out::new(&mut p, len, len),
				Mat::strided(&q[start * qw + h * hd..], len, hd, qw),
				Mat::strided(&k[start * kw + g * hd..], len, hd, kw).t(),
				heads.scale,
				false,
			);
			for (t, row) in p.chunks_exact_mut(len).enumerate() {
				let first = heads.window.map_or(0, |w| (t + 1).saturating_sub(w));
				let visible = &mut row[first..=t];
				let max = visible.iter().copied().fold(f32::NEG_INFINITY, f32::max);
				let mut sum = 0.0;
				for s in visible.iter_mut() {
					*s = (*s - max).exp();
					sum += *s;
				}
				visible.iter_mut().for_each(|s| *s /= sum);
				row[..first].fill(0.0);
				row[t + 1..].fill(0.0);
			}
			let mut o = vec![0f32; len * hd];
			matmul(Out::new(&mut o, len, hd), Mat::new(&p, len, len), Mat::strided(&v[start * kw + g * hd..], len, hd, kw), 1.0, false);
			(p, o)
		})
		.collect();
	let mut probs = Vec::with_capacity(results.len());
	for (((start, len), h), (p, o)) in jobs.iter().zip(results) {
		for t in 0..*len {
			out[(start + t) * qw + h * hd..][..hd].copy_from_slice(&o[t * hd..][..hd]);
		}
		probs.push(p);
	}
	(out, probs)
}

/// The backward of [`attention`]: from `dout`, the gradients of (rotated) `q`, `k` and `v`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
	q: &[f32],
	k: &[f32],
	v: &[f32],
	probs: &[Vec<f32>],
	dout: &[f32],
	segments: &[(usize, usize)],
	heads: &Heads,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
	let rows: usize = segments.iter().map(|s| s.1).sum();
	let (qw, kw, hd, group) = (heads.q_width(), heads.kv_width(), heads.head_dim, heads.group());
	// One task per (segment, kv head): the query heads sharing a kv head add into its gradients.
	let jobs: Vec<(usize, (usize, usize), usize)> = segments
		.iter()
		.enumerate()
		.flat_map(|(i, &seg)| (0..heads.kv_heads).map(move |g| (i, seg, g)))
		.collect();
	let results: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = jobs
		.par_iter()
		.map(|&(i, (start, len), g)| {
			let mut dq = vec![0f32; len * group * hd];
			let mut dk = vec![0f32; len * hd];
			let mut dv = vec![0f32; len * hd];
			let mut ds = vec![0f32; len * len];
			let k_g = Mat::strided(&k[start * kw + g * hd..], len, hd, kw);
			for r in 0..group {
				let h = g * group + r;
				let p = &probs[i * heads.query_heads + h];
				let dout_h = Mat::strided(&dout[start * qw + h * hd..], len, hd, qw);
				// dv += Pᵀ · dout; dP = dout · vᵀ.
				matmul(Out::new(&mut dv, len, hd), Mat::new(p, len, len).t(), dout_h, 1.0, true);
				matmul(Out::new(&mut ds, len, len), dout_h, Mat::strided(&v[start * kw + g * hd..], len, hd, kw).t(), 1.0, false);
				// dS = P ⊙ (dP − Σ dP ⊙ P), row by row.
				for (ds, p) in ds.chunks_exact_mut(len).zip(p.chunks_exact(len)) {
					let dot: f32 = ds.iter().zip(p).map(|(d, p)| d * p).sum();
					ds.iter_mut().zip(p).for_each(|(d, p)| *d = p * (*d - dot));
				}
				// dq = scale · dS · k; dk += scale · dSᵀ · q.
				matmul(Out::strided(&mut dq[r * hd..], len, hd, group * hd), Mat::new(&ds, len, len), k_g, heads.scale, false);
				let q_h = Mat::strided(&q[start * qw + h * hd..], len, hd, qw);
				matmul(Out::new(&mut dk, len, hd), Mat::new(&ds, len, len).t(), q_h, heads.scale, true);
			}
			(dq, dk, dv)
		})
		.collect();
	let (mut dq, mut dk, mut dv) = (vec![0f32; rows * qw], vec![0f32; rows * kw], vec![0f32; rows * kw]);
	for ((_, (start, len), g), (dq_g, dk_g, dv_g)) in jobs.iter().zip(results) {
		for t in 0..*len {
			let row = start + t;
			dq[row * qw + g * group * hd..][..group * hd].copy_from_slice(&dq_g[t * group * hd..][..group * hd]);
			dk[row * kw + g * hd..][..hd].copy_from_slice(&dk_g[t * hd..][..hd]);
			dv[row * kw + g * hd..][..hd].copy_from_slice(&dv_g[t * hd..][..hd]);
		}
	}
	(dq, dk, dv)
}
