//! The training forward and backward of a decoder with LoRA on chosen projections: the base
//! frozen (dequantized to f32 a layer at a time, or kept), the LoRA weights trainable. Computes
//! what the serving engine computes for the same weights (tested against it), then the
//! gradients of the adapter's weights by hand: no gradient of a frozen weight is ever formed.
//!
//! A [`Sequence`] packs several items into one run of rows; each item attends only to itself and
//! its positions start at 0, so packing changes nothing but speed. Layers' activations are kept
//! while they fit a budget; the others keep only their input and are recomputed in the backward
//! (gradient checkpointing), so the activations' memory stays within the budget at any depth
//! (attention's probabilities, one `len × len` matrix per item and head, grow with the square
//! of the sequence length: `--max-seq-len` bounds them).

use std::sync::{Arc, OnceLock};

use anyhow::{ensure, Result};
use rayon::prelude::*;
use openledger_engine::model::{
	rope::{Rope, StepAngles},
	FrozenLayer, Llama, LlamaConfig, Projection,
};

use crate::{
	linalg::{matmul, Mat, Out},
	lora::LoraLayout,
	ops::{self, Gate, Heads},
};

/// Items packed into one run of rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sequence {
	pub tokens: Vec<u32>,
	/// `(first row, rows)` of each item, in order, covering every row.
	pub segments: Vec<(usize, usize)>,
	/// For each row, the token the model is trained to predict after it (`None`: no loss there).
	pub targets: Vec<Option<u32>>,
}

impl Sequence {
	/// Appends an item whose every token after the first is a target.
	pub fn push_item(&mut self, tokens: &[u32]) {
		let trained: Vec<bool> = (0..tokens.len()).map(|i| i > 0).collect();
		self.push_piece(tokens, &trained);
	}

	/// Appends an item of which the tokens marked in `trained` are targets (the first cannot be:
	/// nothing before it in the item predicts it).
	pub fn push_piece(&mut self, tokens: &[u32], trained: &[bool]) {
		assert_eq!(tokens.len(), trained.len());
		self.segments.push((self.tokens.len(), tokens.len()));
		self.tokens.extend_from_slice(tokens);
		for i in 0..tokens.len() {
			self.targets.push(tokens.get(i + 1).filter(|_| trained[i + 1]).copied());
		}
	}

	pub fn len(&self) -> usize {
		self.tokens.len()
	}

	pub fn is_empty(&self) -> bool {
		self.tokens.is_empty()
	}

	/// Rows that carry a target.
	pub fn target_count(&self) -> usize {
		self.targets.iter().filter(|t| t.is_some()).count()
	}
}

/// The base model's weights as the trainer reads them.
pub struct FrozenBase {
	llama: Arc<Llama>,
	/// Layers dequantized once and kept, where the caller asked for it.
	kept: Option<Vec<OnceLock<Arc<FrozenLayer>>>>,
	norm: Vec<f32>,
	/// The output projection `[vocab, hidden]` in f32.
	head: Vec<f32>,
}

impl FrozenBase {
	/// `keep_layers`: dequantize each layer once and keep it (fastest; the base's size in f32),
	/// rather than once per use (QLoRA's way: one layer's f32 weights at a time).
	pub fn new(llama: Arc<Llama>, keep_layers: bool) -> Result<Self> {
		let c = &llama.config;
		let norm = llama.frozen_output_norm()?;
		let head = llama.frozen_lm_head_rows(0..c.vocab_size)?;
		let kept = keep_layers.then(|| (0..c.num_layers).map(|_| OnceLock::new()).collect());
		Ok(Self { llama, kept, norm, head })
	}

	pub fn config(&self) -> &LlamaConfig {
		&self.llama.config
	}

	fn layer(&self, l: usize) -> Result<Arc<FrozenLayer>> {
		match &self.kept {
			Some(kept) => {
				if let Some(layer) = kept[l].get() {
					return Ok(layer.clone());
				}
				let layer = Arc::new(self.llama.frozen_layer(l)?);
				Ok(kept[l].get_or_init(|| layer).clone())
			},
			None => Ok(Arc::new(self.llama.frozen_layer(l)?)),
		}
	}
}

/// The trainable model: a frozen base and an adapter layout, with how much memory the
/// activations of a sequence may keep.
pub struct LoraModel<'a> {
	pub base: &'a FrozenBase,
	pub lora: &'a LoraLayout,
	/// Bytes of layer activations kept between the forward and the backward; layers beyond it
	/// are recomputed from their input.
	pub activation_budget: usize,
}

/// What the forward keeps of a layer for its backward.
struct LayerActs {
	h1: Vec<f32>,
	inv1: Vec<f32>,
	/// q and k before their per-head norms, and the norms' 1/rms (Qwen 3, Gemma 3).
	qk_pre: Option<[(Vec<f32>, Vec<f32>); 2]>,
	q: Vec<f32>,
	k: Vec<f32>,
	v: Vec<f32>,
	probs: Vec<Vec<f32>>,
	attn: Vec<f32>,
	/// Each projection's `x · Aᵀ` (`[rows, rank]`) where it is adapted.
	xa: [Option<Vec<f32>>; 7],
	/// Attention's and the MLP's outputs before their post-norms, and those norms' 1/rms (Gemma 3).
	post: [Option<(Vec<f32>, Vec<f32>)>; 2],
	x_mid: Vec<f32>,
	inv2: Vec<f32>,
	h2: Vec<f32>,
	g: Vec<f32>,
	u: Vec<f32>,
	act: Vec<f32>,
}

impl LayerActs {
	fn bytes(&self) -> usize {
		let vecs = [&self.h1, &self.q, &self.k, &self.v, &self.attn, &self.x_mid, &self.h2, &self.g, &self.u, &self.act];
		let probs: usize = self.probs.iter().map(Vec::len).sum();
		let xa: usize = self.xa.iter().flatten().map(Vec::len).sum();
		let post: usize = self.post.iter().flatten().map(|(v, _)| v.len()).sum();
		let qk: usize = self.qk_pre.iter().flatten().map(|(v, _)| v.len()).sum();
		4 * (vecs.iter().map(|v| v.len()).sum::<usize>() + probs + xa + post + qk)
	}
}

/// A layer in the backward: its activations kept, or only its input (recompute).
enum Saved {
	Kept(Box<LayerActs>),
	Input,
}

/// The rotary angles of a sequence's rows (positions restart at each item), for the global base
/// and the sliding-window layers' own.
fn row_angles(config: &LlamaConfig, seq: &Sequence) -> StepAngles {
	let spans: Vec<(usize, usize, usize)> = seq.segments.iter().map(|&(start, n)| (start, n, 0)).collect();
	Rope::new(config).step(&spans)
}

/// The loss of a sequence and, where asked, its gradients.
pub struct Loss {
	/// Sum over target rows of −log p(target).
	pub sum: f64,
	pub targets: usize,
}

impl LoraModel<'_> {
	fn config(&self) -> &LlamaConfig {
		self.base.config()
	}

	fn heads(&self, l: usize) -> Heads {
		let c = self.config();
		Heads {
			query_heads: c.num_heads,
			kv_heads: c.num_kv_heads,
			head_dim: c.head_dim,
			scale: c.attention_scale,
			window: c.window_of(l),
		}
	}

	/// `x · Wᵀ (+ bias) + s · (x · Aᵀ) · Bᵀ` for `rows` rows; returns the output and `x · Aᵀ`.
	fn linear(&self, params: &[f32], l: usize, p: Projection, w: &[f32], bias: Option<&[f32]>, x: &[f32], rows: usize) -> (Vec<f32>, Option<Vec<f32>>) {
		let (in_f, out_f) = self.config().projection_dims(p);
		let mut y = vec![0f32; rows * out_f];
		if let Some(bias) = bias {
			y.chunks_exact_mut(out_f).for_each(|row| row.copy_from_slice(bias));
		}
		matmul(Out::new(&mut y, rows, out_f), Mat::new(x, rows, in_f), Mat::new(w, out_f, in_f).t(), 1.0, bias.is_some());
		let xa = self.lora.slot(l, p).map(|slot| {
			let r = self.lora.rank;
			let pair = self.lora.pair(params, slot);
			let mut xa = vec![0f32; rows * r];
			matmul(Out::new(&mut xa, rows, r), Mat::new(x, rows, in_f), Mat::new(pair.a, r, in_f).t(), 1.0, false);
			matmul(Out::new(&mut y, rows, out_f), Mat::new(&xa, rows, r), Mat::new(pair.b, out_f, r).t(), self.lora.scale(), true);
			xa
		});
		(y, xa)
	}

	/// The backward of [`Self::linear`]: adds `dy · W` (and the adapter's part) into `dx`, and the
	/// adapter's gradients into `grads`.
	#[allow(clippy::too_many_arguments)]
	fn linear_backward(
		&self,
		params: &[f32],
		grads: &mut [f32],
		l: usize,
		p: Projection,
		w: &[f32],
		x: &[f32],
		xa: Option<&Vec<f32>>,
		dy: &[f32],
		rows: usize,
		dx: &mut [f32],
	) {
		let (in_f, out_f) = self.config().projection_dims(p);
		matmul(Out::new(dx, rows, in_f), Mat::new(dy, rows, out_f), Mat::new(w, out_f, in_f), 1.0, true);
		let (Some(slot), Some(xa)) = (self.lora.slot(l, p), xa) else { return };
		let (r, s) = (self.lora.rank, self.lora.scale());
		let pair = self.lora.pair(params, slot);
		let (ga, gb) = self.lora.pair_mut(grads, slot);
		// dB += s · dyᵀ · xa; d(xa) = s · dy · B; dA += d(xa)ᵀ · x; dx += d(xa) · A.
		matmul(Out::new(gb, out_f, r), Mat::new(dy, rows, out_f).t(), Mat::new(xa, rows, r), s, true);
		let mut dxa = vec![0f32; rows * r];
		matmul(Out::new(&mut dxa, rows, r), Mat::new(dy, rows, out_f), Mat::new(pair.b, out_f, r), s, false);
		matmul(Out::new(ga, r, in_f), Mat::new(&dxa, rows, r).t(), Mat::new(x, rows, in_f), 1.0, true);
		matmul(Out::new(dx, rows, in_f), Mat::new(&dxa, rows, r), Mat::new(pair.a, r, in_f), 1.0, true);
	}

	/// One layer forward from `x`; returns its output and what its backward needs.
	fn layer_forward(&self, params: &[f32], l: usize, w: &FrozenLayer, x: &[f32], seq: &Sequence, angles: &StepAngles) -> (Vec<f32>, LayerActs) {
		let c = self.config();
		let (rows, h, hd, eps) = (seq.len(), c.hidden_size, c.head_dim, c.rms_norm_eps as f32);
		let heads = self.heads(l);
		let mut h1 = vec![0f32; rows * h];
		let inv1 = ops::rms_norm(x, &w.attn_norm, h, eps, &mut h1);
		let bias = |i: usize| w.qkv_bias.as_ref().map(|b| b[i].as_slice());
		let proj = |p: Projection| w.proj[p.index()].as_slice();
		let mut xa: [Option<Vec<f32>>; 7] = Default::default();
		let (mut q, xa_q) = self.linear(params, l, Projection::Q, proj(Projection::Q), bias(0), &h1, rows);
		let (mut k, xa_k) = self.linear(params, l, Projection::K, proj(Projection::K), bias(1), &h1, rows);
		let (v, xa_v) = self.linear(params, l, Projection::V, proj(Projection::V), bias(2), &h1, rows);
		(xa[0], xa[1], xa[2]) = (xa_q, xa_k, xa_v);
		let qk_pre = w.qk_norm.as_ref().map(|[qn, kn]| {
			let norm = |t: &mut Vec<f32>, weights: &[f32]| {
				let pre = t.clone();
				let inv = ops::rms_norm(&pre, weights, hd, eps, t);
				(pre, inv)
			};
			[norm(&mut q, qn), norm(&mut k, kn)]
		});
		let angles = angles.of_layer(heads.window.is_some());
		ops::rope(&mut q, c.num_heads * hd, hd, &angles.cos, &angles.sin, c.rope_interleaved, false);
		ops::rope(&mut k, c.num_kv_heads * hd, hd, &angles.cos, &angles.sin, c.rope_interleaved, false);
		let (attn, probs) = ops::attention(&q, &k, &v, &seq.segments, &heads);
		let (o, xa_o) = self.linear(params, l, Projection::O, proj(Projection::O), None, &attn, rows);
		xa[3] = xa_o;
		let mut post: [Option<(Vec<f32>, Vec<f32>)>; 2] = Default::default();
		let mut post_norm = |i: usize, raw: Vec<f32>| -> Vec<f32> {
			match &w.post_norms {
				Some(norms) => {
					let mut y = vec![0f32; raw.len()];
					let inv = ops::rms_norm(&raw, &norms[i], h, eps, &mut y);
					post[i] = Some((raw, inv));
					y
				},
				None => raw,
			}
		};
		let mut x_mid = post_norm(0, o);
		x_mid.iter_mut().zip(x).for_each(|(m, x)| *m += x);
		let mut h2 = vec![0f32; rows * h];
		let inv2 = ops::rms_norm(&x_mid, &w.ffn_norm, h, eps, &mut h2);
		let (g, xa_g) = self.linear(params, l, Projection::Gate, proj(Projection::Gate), None, &h2, rows);
		let (u, xa_u) = self.linear(params, l, Projection::Up, proj(Projection::Up), None, &h2, rows);
		(xa[4], xa[5]) = (xa_g, xa_u);
		let mut act = vec![0f32; g.len()];
		self.gate().forward(&g, &u, &mut act);
		let (d, xa_d) = self.linear(params, l, Projection::Down, proj(Projection::Down), None, &act, rows);
		xa[6] = xa_d;
		let mut out = post_norm(1, d);
		out.iter_mut().zip(&x_mid).for_each(|(o, m)| *o += m);
		(out, LayerActs { h1, inv1, qk_pre, q, k, v, probs, attn, xa, post, x_mid, inv2, h2, g, u, act })
	}

	fn gate(&self) -> Gate {
		match self.config().architecture.gelu_gate() {
			true => Gate::Gelu,
			false => Gate::Silu,
		}
	}

	/// One layer backward: from the gradient of its output, the gradient of its input `x`.
	#[allow(clippy::too_many_arguments)]
	fn layer_backward(
		&self,
		params: &[f32],
		grads: &mut [f32],
		l: usize,
		w: &FrozenLayer,
		x: &[f32],
		a: &LayerActs,
		dout: Vec<f32>,
		seq: &Sequence,
		angles: &StepAngles,
	) -> Vec<f32> {
		let c = self.config();
		let (rows, h, hd) = (seq.len(), c.hidden_size, c.head_dim);
		let proj = |p: Projection| w.proj[p.index()].as_slice();
		let post_backward = |i: usize, dy: &[f32]| -> Vec<f32> {
			match (&a.post[i], &w.post_norms) {
				(Some((raw, inv)), Some(norms)) => {
					let mut d = vec![0f32; dy.len()];
					ops::rms_norm_backward(raw, &norms[i], inv, dy, h, &mut d);
					d
				},
				_ => dy.to_vec(),
			}
		};
		// The MLP: out = x_mid + post(down(gate(g) · u)).
		let mut dx_mid = dout;
		let dd = post_backward(1, &dx_mid);
		let mut dact = vec![0f32; a.act.len()];
		self.linear_backward(params, grads, l, Projection::Down, proj(Projection::Down), &a.act, a.xa[6].as_ref(), &dd, rows, &mut dact);
		let (mut dg, mut du) = (vec![0f32; a.g.len()], vec![0f32; a.u.len()]);
		self.gate().backward(&a.g, &a.u, &dact, &mut dg, &mut du);
		let mut dh2 = vec![0f32; rows * h];
		self.linear_backward(params, grads, l, Projection::Gate, proj(Projection::Gate), &a.h2, a.xa[4].as_ref(), &dg, rows, &mut dh2);
		self.linear_backward(params, grads, l, Projection::Up, proj(Projection::Up), &a.h2, a.xa[5].as_ref(), &du, rows, &mut dh2);
		ops::rms_norm_backward(&a.x_mid, &w.ffn_norm, &a.inv2, &dh2, h, &mut dx_mid);
		// Attention: x_mid = x + post(o(attention(rope(norm(q)), rope(norm(k)), v))).
		let do_ = post_backward(0, &dx_mid);
		let mut dattn = vec![0f32; a.attn.len()];
		self.linear_backward(params, grads, l, Projection::O, proj(Projection::O), &a.attn, a.xa[3].as_ref(), &do_, rows, &mut dattn);
		let heads = self.heads(l);
		let (mut dq, mut dk, dv) = ops::attention_backward(&a.q, &a.k, &a.v, &a.probs, &dattn, &seq.segments, &heads);
		let angles = angles.of_layer(heads.window.is_some());
		ops::rope(&mut dq, c.num_heads * hd, hd, &angles.cos, &angles.sin, c.rope_interleaved, true);
		ops::rope(&mut dk, c.num_kv_heads * hd, hd, &angles.cos, &angles.sin, c.rope_interleaved, true);
		if let (Some([(q_pre, q_inv), (k_pre, k_inv)]), Some([qn, kn])) = (&a.qk_pre, &w.qk_norm) {
			let mut dq_pre = vec![0f32; dq.len()];
			ops::rms_norm_backward(q_pre, qn, q_inv, &dq, hd, &mut dq_pre);
			let mut dk_pre = vec![0f32; dk.len()];
			ops::rms_norm_backward(k_pre, kn, k_inv, &dk, hd, &mut dk_pre);
			(dq, dk) = (dq_pre, dk_pre);
		}
		let mut dh1 = vec![0f32; rows * h];
		self.linear_backward(params, grads, l, Projection::Q, proj(Projection::Q), &a.h1, a.xa[0].as_ref(), &dq, rows, &mut dh1);
		self.linear_backward(params, grads, l, Projection::K, proj(Projection::K), &a.h1, a.xa[1].as_ref(), &dk, rows, &mut dh1);
		self.linear_backward(params, grads, l, Projection::V, proj(Projection::V), &a.h1, a.xa[2].as_ref(), &dv, rows, &mut dh1);
		let mut dx = dx_mid;
		ops::rms_norm_backward(x, &w.attn_norm, &a.inv1, &dh1, h, &mut dx);
		dx
	}

	fn check(&self, params: &[f32], seq: &Sequence) -> Result<()> {
		let c = self.config();
		ensure!(params.len() == self.lora.len(), "{} adapter weights for a layout of {}", params.len(), self.lora.len());
		ensure!(!seq.is_empty() && seq.targets.len() == seq.len(), "a sequence needs tokens and a target slot for each");
		let mut next = 0;
		for &(start, len) in &seq.segments {
			ensure!(start == next && len > 0, "segments must be non-empty and follow each other");
			next += len;
		}
		ensure!(next == seq.len(), "segments do not cover the sequence");
		let longest = seq.segments.iter().map(|s| s.1).max().unwrap_or(0);
		ensure!(longest <= c.max_position, "an item of {longest} tokens is beyond the model's context of {}", c.max_position);
		ensure!(seq.tokens.iter().all(|&t| (t as usize) < c.vocab_size), "a token id is beyond the vocabulary");
		Ok(())
	}

	/// The last layer's output (before the final norm) for every row.
	fn hidden(&self, params: &[f32], seq: &Sequence) -> Result<Vec<f32>> {
		let angles = row_angles(self.config(), seq);
		let mut x = self.base.llama.frozen_embeddings(&seq.tokens)?;
		for l in 0..self.config().num_layers {
			x = self.layer_forward(params, l, &*self.base.layer(l)?, &x, seq, &angles).0;
		}
		Ok(x)
	}

	/// Every row's vocabulary logits, `[rows, vocab]`: what the tests hold against the serving
	/// engine.
	pub fn logits(&self, params: &[f32], seq: &Sequence) -> Result<Vec<f32>> {
		self.check(params, seq)?;
		let c = self.config();
		let x = self.hidden(params, seq)?;
		let mut hf = vec![0f32; x.len()];
		ops::rms_norm(&x, &self.base.norm, c.hidden_size, c.rms_norm_eps as f32, &mut hf);
		let mut logits = vec![0f32; seq.len() * c.vocab_size];
		let rows = seq.len();
		matmul(
			Out::new(&mut logits, rows, c.vocab_size),
			Mat::new(&hf, rows, c.hidden_size),
			Mat::new(&self.base.head, c.vocab_size, c.hidden_size).t(),
			1.0,
			false,
		);
		if let Some(cap) = c.final_logit_softcap {
			logits.iter_mut().for_each(|z| *z = cap * (*z / cap).tanh());
		}
		Ok(logits)
	}

	/// The sequence's loss, without gradients.
	pub fn loss(&self, params: &[f32], seq: &Sequence) -> Result<Loss> {
		let vocab = self.config().vocab_size;
		let logits = self.logits(params, seq)?;
		let mut sum = 0f64;
		for (row, target) in logits.chunks_exact(vocab).zip(&seq.targets) {
			if let Some(t) = target {
				sum += log_sum_exp(row) - row[*t as usize] as f64;
			}
		}
		Ok(Loss { sum, targets: seq.target_count() })
	}

	/// Forward and backward of one sequence: adds `loss_scale ·` the gradient of its summed loss
	/// into `grads` (a trainer scales by 1 / the batch's targets, for the batch's mean loss).
	pub fn accumulate(&self, params: &[f32], seq: &Sequence, loss_scale: f32, grads: &mut [f32]) -> Result<Loss> {
		self.accumulate_from(0, params, seq, loss_scale, grads)
	}

	/// [`Self::accumulate`] for the layers from `first` on only: the layers below run forward and
	/// keep nothing, and their adapter weights get no gradient (a cheaper gradient where only the
	/// top layers' part is wanted).
	pub fn accumulate_from(&self, first: usize, params: &[f32], seq: &Sequence, loss_scale: f32, grads: &mut [f32]) -> Result<Loss> {
		self.check(params, seq)?;
		ensure!(grads.len() == params.len(), "gradients of another layout");
		let c = self.config();
		let (rows, h) = (seq.len(), c.hidden_size);
		let angles = row_angles(c, seq);
		let mut inputs = Vec::with_capacity(c.num_layers);
		let mut saved = Vec::with_capacity(c.num_layers);
		let mut kept_bytes = 0;
		let mut x = self.base.llama.frozen_embeddings(&seq.tokens)?;
		for l in 0..c.num_layers {
			let (out, acts) = self.layer_forward(params, l, &*self.base.layer(l)?, &x, seq, &angles);
			if l < first {
				x = out;
				inputs.push(Vec::new());
				saved.push(Saved::Input);
				continue;
			}
			kept_bytes += acts.bytes();
			saved.push(match kept_bytes <= self.activation_budget {
				true => Saved::Kept(Box::new(acts)),
				false => Saved::Input,
			});
			inputs.push(std::mem::replace(&mut x, out));
		}
		// The head: final norm, logits and cross-entropy, on the rows with a target only.
		let mut hf = vec![0f32; x.len()];
		let inv_f = ops::rms_norm(&x, &self.base.norm, h, c.rms_norm_eps as f32, &mut hf);
		let (loss, dhf) = self.head_backward(&hf, seq, loss_scale);
		let mut dx = vec![0f32; rows * h];
		ops::rms_norm_backward(&x, &self.base.norm, &inv_f, &dhf, h, &mut dx);
		for l in (first.min(c.num_layers)..c.num_layers).rev() {
			let w = self.base.layer(l)?;
			let input = &inputs[l];
			let acts = match std::mem::replace(&mut saved[l], Saved::Input) {
				Saved::Kept(acts) => acts,
				Saved::Input => Box::new(self.layer_forward(params, l, &w, input, seq, &angles).1),
			};
			dx = self.layer_backward(params, grads, l, &w, input, &acts, dx, seq, &angles);
		}
		Ok(loss)
	}

	/// Cross-entropy over the rows with targets, a slice of rows at a time (the logits of a long
	/// sequence over a large vocabulary would not fit): the loss, and `d loss · scale / d hf`.
	fn head_backward(&self, hf: &[f32], seq: &Sequence, scale: f32) -> (Loss, Vec<f32>) {
		const ROWS_AT_ONCE: usize = 64;
		let c = self.config();
		let (h, vocab) = (c.hidden_size, c.vocab_size);
		let head = Mat::new(&self.base.head, vocab, h);
		let rows: Vec<(usize, u32)> = seq.targets.iter().enumerate().filter_map(|(i, t)| t.map(|t| (i, t))).collect();
		let mut dhf = vec![0f32; hf.len()];
		let mut sum = 0f64;
		let mut x = Vec::with_capacity(ROWS_AT_ONCE * h);
		let mut logits = vec![0f32; ROWS_AT_ONCE * vocab];
		let mut dx = vec![0f32; ROWS_AT_ONCE * h];
		for chunk in rows.chunks(ROWS_AT_ONCE) {
			let n = chunk.len();
			x.clear();
			chunk.iter().for_each(|&(i, _)| x.extend_from_slice(&hf[i * h..][..h]));
			let logits = &mut logits[..n * vocab];
			matmul(Out::new(logits, n, vocab), Mat::new(&x, n, h), head.t(), 1.0, false);
			// Each row: its loss, and its logits turned into d loss / d logits in place.
			let softcap = c.final_logit_softcap;
			let losses: Vec<f64> = logits
				.par_chunks_exact_mut(vocab)
				.zip(chunk.par_iter())
				.map(|(row, &(_, target))| {
					// Capped logits z = cap · tanh(l / cap) (Gemma 2's), whose dz/dl = 1 − tanh².
					if let Some(cap) = softcap {
						row.iter_mut().for_each(|z| *z = cap * (*z / cap).tanh());
					}
					let lse = log_sum_exp(row);
					let t = target as usize;
					let z_target = row[t];
					for z in row.iter_mut() {
						let p = (*z - lse as f32).exp() * scale;
						// Through the cap: 1 − tanh² from the capped value itself, (z / cap)².
						*z = softcap.map_or(p, |cap| p * (1.0 - (*z / cap) * (*z / cap)));
					}
					row[t] -= scale * softcap.map_or(1.0, |cap| 1.0 - (z_target / cap) * (z_target / cap));
					lse - z_target as f64
				})
				.collect();
			sum += losses.iter().sum::<f64>();
			let dx = &mut dx[..n * h];
			matmul(Out::new(dx, n, h), Mat::new(logits, n, vocab), head, 1.0, false);
			for (d, &(i, _)) in dx.chunks_exact(h).zip(chunk) {
				dhf[i * h..][..h].copy_from_slice(d);
			}
		}
		(Loss { sum, targets: rows.len() }, dhf)
	}
}

fn log_sum_exp(row: &[f32]) -> f64 {
	let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
	max + row.iter().map(|&z| (z - max as f32).exp() as f64).sum::<f64>().ln()
}
