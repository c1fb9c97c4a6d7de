//! A BERT encoder for sentence embeddings on the CPU, written out rather than assembled from
//! tensor ops, because embedding throughput is what ingest and every query wait on.
//!
//! - The sequences of a batch are **packed**, not padded: every matrix product runs over the real
//!   tokens only, and attention runs per sequence over its own length, so no mask is needed. This
//!   is the same arithmetic as a padded batch with an attention mask (masked keys get a weight of
//!   exactly zero there).
//! - Query, key and value are one product against their concatenated weights.
//! - Bias, residual, GELU and layer norm are fused passes over the product's output; the
//!   products themselves are the `gemm` crate's (AVX-512 where the CPU has it).
//! - GELU is the exact (erf) one, with a rational erf accurate to a few ULP in f32; softmax uses a
//!   polynomial exp of the same accuracy. Both vectorise, unlike libm's scalar `erff`/`expf`.
//!
//! It reads the Hugging Face `BertModel` layout (`embeddings.*`, `encoder.layer.N.*`, with or
//! without a `bert.` prefix), absolute positions, `gelu` activation, token type 0.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Deserialize;

/// The fields of a Hugging Face BERT `config.json` that the forward pass uses.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
	pub vocab_size: usize,
	pub hidden_size: usize,
	pub num_hidden_layers: usize,
	pub num_attention_heads: usize,
	pub intermediate_size: usize,
	pub max_position_embeddings: usize,
	#[serde(default = "default_type_vocab_size")]
	pub type_vocab_size: usize,
	#[serde(default = "default_layer_norm_eps")]
	pub layer_norm_eps: f64,
	#[serde(default = "default_hidden_act")]
	pub hidden_act: String,
	#[serde(default = "default_position_embedding_type")]
	pub position_embedding_type: String,
}

fn default_type_vocab_size() -> usize {
	2
}
fn default_layer_norm_eps() -> f64 {
	1e-12
}
fn default_hidden_act() -> String {
	"gelu".into()
}
fn default_position_embedding_type() -> String {
	"absolute".into()
}

/// A linear layer `y = x·Wᵀ + b`.
struct Linear {
	/// `Wᵀ` (`in × out`, row-major): gemm then reads W's rows as contiguous columns, which its
	/// kernel takes without repacking them on every call.
	weight_t: Vec<f32>,
	bias: Vec<f32>,
	inputs: usize,
	outputs: usize,
}

struct LayerNorm {
	gamma: Vec<f32>,
	beta: Vec<f32>,
}

struct EncoderLayer {
	/// Query, key and value weights stacked (`3·hidden × hidden`).
	qkv: Linear,
	attention_out: Linear,
	attention_norm: LayerNorm,
	up: Linear,
	down: Linear,
	output_norm: LayerNorm,
}

/// A loaded BERT encoder (see the module documentation).
pub struct BertEncoder {
	config: BertConfig,
	word_embeddings: Vec<f32>,
	position_embeddings: Vec<f32>,
	/// Row 0 of the token type embeddings: every token is of type 0.
	token_type_embedding: Vec<f32>,
	embedding_norm: LayerNorm,
	layers: Vec<EncoderLayer>,
	eps: f32,
}

impl BertEncoder {
	/// Builds the encoder from a config and the bytes of `model.safetensors` (f32, f16 or bf16).
	pub fn load(config: BertConfig, safetensors_bytes: &[u8]) -> Result<Self> {
		if config.hidden_act != "gelu" {
			bail!("hidden_act {:?} is not supported (only \"gelu\")", config.hidden_act);
		}
		if config.position_embedding_type != "absolute" {
			bail!("position_embedding_type {:?} is not supported (only \"absolute\")", config.position_embedding_type);
		}
		if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
			bail!(
				"hidden_size {} is not a multiple of num_attention_heads {}",
				config.hidden_size,
				config.num_attention_heads
			);
		}
		let tensors = safetensors::SafeTensors::deserialize(safetensors_bytes).context("not a safetensors file")?;
		let prefix = if tensors.names().iter().any(|n| n.starts_with("bert.")) { "bert." } else { "" };
		let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
			let full = format!("{prefix}{name}");
			let view = tensors.tensor(&full).with_context(|| format!("tensor {full} is missing"))?;
			if view.shape() != shape {
				bail!("tensor {full} has shape {:?}, expected {shape:?}", view.shape());
			}
			let bytes = view.data();
			Ok(match view.dtype() {
				safetensors::Dtype::F32 =>
					bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
				safetensors::Dtype::F16 =>
					bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
				safetensors::Dtype::BF16 =>
					bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
				other => bail!("tensor {full} is {other:?}; f32, f16 or bf16 expected"),
			})
		};
		let (h, i) = (config.hidden_size, config.intermediate_size);
		let weight_and_bias = |name: &str, outputs: usize, inputs: usize| -> Result<(Vec<f32>, Vec<f32>)> {
			Ok((read(&format!("{name}.weight"), &[outputs, inputs])?, read(&format!("{name}.bias"), &[outputs])?))
		};
		let linear = |name: &str, outputs: usize, inputs: usize| -> Result<Linear> {
			let (weight, bias) = weight_and_bias(name, outputs, inputs)?;
			Ok(Linear::new(&weight, bias, inputs))
		};
		let norm = |name: &str| -> Result<LayerNorm> {
			Ok(LayerNorm { gamma: read(&format!("{name}.weight"), &[h])?, beta: read(&format!("{name}.bias"), &[h])? })
		};

		let mut layers = Vec::with_capacity(config.num_hidden_layers);
		for n in 0..config.num_hidden_layers {
			let at = |part: &str| format!("encoder.layer.{n}.{part}");
			let (q, k, v) = (
				weight_and_bias(&at("attention.self.query"), h, h)?,
				weight_and_bias(&at("attention.self.key"), h, h)?,
				weight_and_bias(&at("attention.self.value"), h, h)?,
			);
			let qkv = Linear::new(&[q.0, k.0, v.0].concat(), [q.1, k.1, v.1].concat(), h);
			layers.push(EncoderLayer {
				qkv,
				attention_out: linear(&at("attention.output.dense"), h, h)?,
				attention_norm: norm(&at("attention.output.LayerNorm"))?,
				up: linear(&at("intermediate.dense"), i, h)?,
				down: linear(&at("output.dense"), h, i)?,
				output_norm: norm(&at("output.LayerNorm"))?,
			});
		}
		let token_types = read("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?;
		Ok(Self {
			word_embeddings: read("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
			position_embeddings: read("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
			token_type_embedding: token_types[..h].to_vec(),
			embedding_norm: norm("embeddings.LayerNorm")?,
			layers,
			eps: config.layer_norm_eps as f32,
			config,
		})
	}

	/// The mean-pooled, L2-normalised last hidden states of each token id sequence (each
	/// non-empty and at most `max_position_embeddings` long), as sentence-transformers pools them.
	///
	/// `split_products` spreads each matrix product over rayon's pool: right for a lone batch.
	/// A caller with several batches does better to run them side by side with `false`, since
	/// whole batches need no synchronisation between layers.
	pub fn embed(&self, sequences: &[&[u32]], split_products: bool) -> Result<Vec<Vec<f32>>> {
		let parallelism = match rayon::current_num_threads() {
			threads if split_products && threads > 1 => gemm::Parallelism::Rayon(threads),
			_ => gemm::Parallelism::None,
		};
		let h = self.config.hidden_size;
		let mut offsets = Vec::with_capacity(sequences.len() + 1);
		offsets.push(0);
		for seq in sequences {
			if seq.is_empty() || seq.len() > self.config.max_position_embeddings {
				bail!("a sequence of {} tokens (1 to {} expected)", seq.len(), self.config.max_position_embeddings);
			}
			if let Some(&id) = seq.iter().find(|&&id| id as usize >= self.config.vocab_size) {
				bail!("token id {id} is outside the vocabulary of {}", self.config.vocab_size);
			}
			offsets.push(offsets.last().unwrap() + seq.len());
		}
		let tokens = *offsets.last().unwrap();
		if tokens == 0 {
			return Ok(Vec::new());
		}

		let mut x = vec![0f32; tokens * h];
		for (seq, rows) in sequences.iter().zip(split_rows(&mut x, &offsets, h)) {
			for (position, (&id, row)) in seq.iter().zip(rows.chunks_exact_mut(h)).enumerate() {
				let word = &self.word_embeddings[id as usize * h..][..h];
				let pos = &self.position_embeddings[position * h..][..h];
				for (((out, w), p), t) in row.iter_mut().zip(word).zip(pos).zip(&self.token_type_embedding) {
					*out = w + p + t;
				}
			}
		}
		layer_norm_rows(&mut x, &self.embedding_norm, self.eps);

		let mut qkv = Vec::new();
		let mut context = vec![0f32; tokens * h];
		let mut intermediate = Vec::new();
		let mut residual = Vec::new();
		for layer in &self.layers {
			layer.qkv.forward_into(&x, tokens, None, &mut qkv, parallelism);
			self.attention(&qkv, &offsets, &mut context);
			layer.attention_out.forward_into(&context, tokens, Some(&x), &mut residual, parallelism);
			layer_norm_rows(&mut residual, &layer.attention_norm, self.eps);
			std::mem::swap(&mut x, &mut residual);

			layer.up.forward_into(&x, tokens, None, &mut intermediate, parallelism);
			intermediate.par_chunks_mut(GELU_CHUNK).for_each(gelu_in_place);
			layer.down.forward_into(&intermediate, tokens, Some(&x), &mut residual, parallelism);
			layer_norm_rows(&mut residual, &layer.output_norm, self.eps);
			std::mem::swap(&mut x, &mut residual);
		}

		Ok(offsets
			.windows(2)
			.map(|w| {
				let mut mean = vec![0f32; h];
				for row in x[w[0] * h..w[1] * h].chunks_exact(h) {
					for (m, v) in mean.iter_mut().zip(row) {
						*m += v;
					}
				}
				let count = (w[1] - w[0]) as f32;
				mean.iter_mut().for_each(|m| *m /= count);
				// torch.nn.functional.normalize: x / max(‖x‖₂, 1e-12).
				let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-12);
				mean.iter_mut().for_each(|m| *m /= norm);
				mean
			})
			.collect())
	}

	/// Scaled dot-product self-attention of every sequence over itself, all heads, written into
	/// `context` (`tokens × hidden`, heads side by side as BERT concatenates them).
	fn attention(&self, qkv: &[f32], offsets: &[usize], context: &mut [f32]) {
		let h = self.config.hidden_size;
		let heads = self.config.num_attention_heads;
		let d = h / heads;
		let scale = 1.0 / (d as f32).sqrt();
		// `zip` stops at the shorter side: each sequence pairs with its start offset.
		split_rows(context, offsets, h).into_par_iter().zip(offsets.par_iter()).for_each(|(out, &start)| {
			let len = out.len() / h;
			let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
			let mut probs = vec![0f32; len * len];
			for head in 0..heads {
				let (q, k, v) = (&rows[head * d..], &rows[h + head * d..], &rows[2 * h + head * d..]);
				let stride = 3 * h as isize;
				// SAFETY: every matrix lies inside `rows` (len rows of 3·hidden), `probs`
				// (len × len) or `out` (len rows of hidden) with the strides given: Q, K and V are
				// this head's columns of each token's row, and its context is its columns of `out`.
				unsafe {
					// scores = Q·Kᵀ/√d
					gemm::gemm(len, len, d, probs.as_mut_ptr(), 1, len as isize, false,
						q.as_ptr(), 1, stride, k.as_ptr(), stride, 1, 0.0, scale, false, false, false, gemm::Parallelism::None);
				}
				for row in probs.chunks_exact_mut(len) {
					let max = max(row);
					row.iter_mut().for_each(|s| *s = exp(*s - max));
					let inv = 1.0 / sum(row);
					row.iter_mut().for_each(|s| *s *= inv);
				}
				let context = &mut out[head * d..];
				// SAFETY: as above.
				unsafe {
					// context = softmax(scores)·V
					gemm::gemm(len, d, len, context.as_mut_ptr(), 1, h as isize, false,
						probs.as_ptr(), 1, len as isize, v.as_ptr(), 1, stride, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
				}
			}
		});
	}
}

/// Elements of the intermediate activation per GELU task.
const GELU_CHUNK: usize = 16 * 1024;

impl Linear {
	/// From `W` as stored (`out × in`, row-major; `out` is the bias length).
	fn new(weight: &[f32], bias: Vec<f32>, inputs: usize) -> Self {
		let outputs = bias.len();
		assert_eq!(weight.len(), outputs * inputs);
		let mut weight_t = vec![0f32; weight.len()];
		for (o, row) in weight.chunks_exact(inputs).enumerate() {
			for (i, &w) in row.iter().enumerate() {
				weight_t[i * outputs + o] = w;
			}
		}
		Self { weight_t, bias, inputs, outputs }
	}

	/// `out = x·Wᵀ + b (+ residual)` for `rows` rows of `x`; `out` is resized to fit.
	fn forward_into(
		&self,
		x: &[f32],
		rows: usize,
		residual: Option<&[f32]>,
		out: &mut Vec<f32>,
		parallelism: gemm::Parallelism,
	) {
		debug_assert_eq!(x.len(), rows * self.inputs);
		out.clear();
		out.reserve(rows * self.outputs);
		match residual {
			Some(residual) => {
				debug_assert_eq!(residual.len(), rows * self.outputs);
				for row in residual.chunks_exact(self.outputs) {
					out.extend(row.iter().zip(&self.bias).map(|(r, b)| r + b));
				}
			},
			None =>
				for _ in 0..rows {
					out.extend_from_slice(&self.bias);
				},
		}
		// SAFETY: the pointers cover `rows × outputs` (out), `rows × inputs` (x) and
		// `inputs × outputs` (Wᵀ) elements, all row-major with the strides given.
		unsafe {
			gemm::gemm(
				rows,
				self.outputs,
				self.inputs,
				out.as_mut_ptr(),
				1,
				self.outputs as isize,
				true,
				x.as_ptr(),
				1,
				self.inputs as isize,
				self.weight_t.as_ptr(),
				1,
				self.outputs as isize,
				1.0f32,
				1.0f32,
				false,
				false,
				false,
				parallelism,
			);
		}
	}
}

/// Splits `rows × width` into the consecutive row ranges `offsets` marks.
fn split_rows<'a>(mut data: &'a mut [f32], offsets: &[usize], width: usize) -> Vec<&'a mut [f32]> {
	let mut parts = Vec::with_capacity(offsets.len().saturating_sub(1));
	for w in offsets.windows(2) {
		let (part, rest) = data.split_at_mut((w[1] - w[0]) * width);
		parts.push(part);
		data = rest;
	}
	parts
}

/// Layer norm of every row in place, rows spread over the thread pool.
fn layer_norm_rows(x: &mut [f32], norm: &LayerNorm, eps: f32) {
	let h = norm.gamma.len();
	x.par_chunks_mut(h * 32).for_each(|block| {
		for row in block.chunks_exact_mut(h) {
			let mean = sum(row) / h as f32;
			let var = sum_of(row, |v| (v - mean) * (v - mean)) / h as f32;
			let inv = 1.0 / (var + eps).sqrt();
			for ((v, g), b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
				*v = (*v - mean) * inv * g + b;
			}
		}
	});
}

/// Σ x, in eight independent partial sums so that it vectorises (a plain fold is sequential).
fn sum(x: &[f32]) -> f32 {
	sum_of(x, |v| v)
}

/// Σ f(x), as [`sum`].
#[inline(always)]
fn sum_of(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
	let mut lanes = [0f32; 8];
	let (chunks, rest) = x.as_chunks::<8>();
	for chunk in chunks {
		for (lane, &v) in lanes.iter_mut().zip(chunk) {
			*lane += f(v);
		}
	}
	lanes.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
}

/// The largest element (−∞ for none), in eight lanes as [`sum`].
fn max(x: &[f32]) -> f32 {
	let mut lanes = [f32::NEG_INFINITY; 8];
	let (chunks, rest) = x.as_chunks::<8>();
	for chunk in chunks {
		for (lane, &v) in lanes.iter_mut().zip(chunk) {
			*lane = if v > *lane { v } else { *lane };
		}
	}
	lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Exact GELU, `x·(1 + erf(x/√2))/2`, in place.
fn gelu_in_place(x: &mut [f32]) {
	for v in x.iter_mut() {
		*v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
	}
}

/// erf as a rational function of x (odd numerator, even denominator) on [-4, 4], ±1 beyond: the
/// approximation Eigen and XLA use, within 1e-7 of the exact value.
#[inline(always)]
fn erf(x: f32) -> f32 {
	let x = x.clamp(-4.0, 4.0);
	let x2 = x * x;
	let mut p = -2.726_142_3e-10f32;
	p = p * x2 + 2.770_681_4e-8;
	p = p * x2 - 2.101_024e-6;
	p = p * x2 - 5.692_506_4e-5;
	p = p * x2 - 7.349_906e-4;
	p = p * x2 - 2.954_6e-3;
	p = p * x2 - 1.609_603_3e-2;
	let mut q = -1.456_607_2e-5f32;
	q = q * x2 - 2.133_740_6e-4;
	q = q * x2 - 1.682_827e-3;
	q = q * x2 - 7.373_329e-3;
	q = q * x2 - 1.426_474e-2;
	x * p / q
}

/// eˣ by range reduction to r ∈ [-ln2/2, ln2/2] and Cephes' degree-6 polynomial, within 2 ULP;
/// inputs below -87 give the smallest normal float's neighbourhood rather than a subnormal.
#[inline(always)]
fn exp(x: f32) -> f32 {
	let x = x.clamp(-87.0, 88.0);
	let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
	let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
	let mut p = 1.987_569_1e-4f32;
	p = p * r + 1.398_2e-3;
	p = p * r + 8.333_452e-3;
	p = p * r + 4.166_579_6e-2;
	p = p * r + 1.666_666_5e-1;
	p = p * r + 5.000_000_1e-1;
	let e = p * r * r + r + 1.0;
	e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
	use std::collections::BTreeMap;

	use super::*;

	#[test]
	fn erf_is_within_1e_6_of_the_integral() {
		let mut worst = 0f32;
		for i in -6000..=6000 {
			let x = i as f32 / 1000.0;
			worst = worst.max((erf(x) - erf_by_quadrature(x)).abs());
		}
		assert!(worst < 1e-6, "worst |erf - reference| = {worst}");
	}

	/// erf(x) = 2/√π ∫₀ˣ e^(−t²) dt by Simpson's rule on a fine grid (std has no erf).
	fn erf_by_quadrature(x: f32) -> f32 {
		let steps = 2000;
		let h = x as f64 / steps as f64;
		let f = |t: f64| (-t * t).exp();
		let mut sum = f(0.0) + f(x as f64);
		for k in 1..steps {
			sum += f(k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
		}
		(sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()) as f32
	}

	#[test]
	fn exp_is_within_3_ulp_of_std() {
		for i in -87_000..=0 {
			let x = i as f32 / 1000.0;
			let (ours, std) = (exp(x), x.exp());
			assert!((ours - std).abs() <= 3.0 * f32::EPSILON * std, "exp({x}) = {ours}, std {std}");
		}
		assert_eq!(exp(0.0), 1.0);
	}

	#[test]
	fn gemm_linear_matches_a_plain_product_with_bias_and_residual() {
		let (rows, inputs, outputs) = (5, 7, 3);
		let weight: Vec<f32> = (0..outputs * inputs).map(|i| (i as f32 * 0.3).sin()).collect();
		let linear = Linear::new(&weight, vec![0.5, -1.0, 2.0], inputs);
		let x: Vec<f32> = (0..rows * inputs).map(|i| (i as f32 * 0.7).cos()).collect();
		let residual: Vec<f32> = (0..rows * outputs).map(|i| i as f32).collect();
		let mut out = Vec::new();
		linear.forward_into(&x, rows, Some(&residual), &mut out, gemm::Parallelism::None);
		for r in 0..rows {
			for o in 0..outputs {
				let plain: f32 = (0..inputs).map(|k| x[r * inputs + k] * weight[o * inputs + k]).sum::<f32>()
					+ linear.bias[o] + residual[r * outputs + o];
				assert!((out[r * outputs + o] - plain).abs() < 1e-5, "({r}, {o}): {} vs {plain}", out[r * outputs + o]);
			}
		}
	}

	/// A BERT small enough to check by hand: hidden 8, 2 heads, 2 layers, random weights.
	fn tiny_bert(hidden_act: &str) -> (BertConfig, Vec<u8>, BTreeMap<String, Vec<f32>>) {
		let config = BertConfig {
			vocab_size: 11,
			hidden_size: 8,
			num_hidden_layers: 2,
			num_attention_heads: 2,
			intermediate_size: 12,
			max_position_embeddings: 7,
			type_vocab_size: 2,
			layer_norm_eps: 1e-12,
			hidden_act: hidden_act.into(),
			position_embedding_type: "absolute".into(),
		};
		let (h, i) = (config.hidden_size, config.intermediate_size);
		let mut shapes = vec![
			("embeddings.word_embeddings.weight".to_string(), vec![config.vocab_size, h]),
			("embeddings.position_embeddings.weight".into(), vec![config.max_position_embeddings, h]),
			("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
			("embeddings.LayerNorm.weight".into(), vec![h]),
			("embeddings.LayerNorm.bias".into(), vec![h]),
		];
		for n in 0..config.num_hidden_layers {
			for (part, out, inp) in [
				("attention.self.query", h, h),
				("attention.self.key", h, h),
				("attention.self.value", h, h),
				("attention.output.dense", h, h),
				("intermediate.dense", i, h),
				("output.dense", h, i),
			] {
				shapes.push((format!("encoder.layer.{n}.{part}.weight"), vec![out, inp]));
				shapes.push((format!("encoder.layer.{n}.{part}.bias"), vec![out]));
			}
			for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
				shapes.push((format!("encoder.layer.{n}.{norm}.weight"), vec![h]));
				shapes.push((format!("encoder.layer.{n}.{norm}.bias"), vec![h]));
			}
		}
		let mut values = BTreeMap::new();
		let mut bytes = BTreeMap::new();
		for (k, (name, shape)) in shapes.iter().enumerate() {
			let len: usize = shape.iter().product();
			let data: Vec<f32> = (0..len)
				.map(|j| {
					let noise = ((k * 131 + j * 17) as f32 * 0.618).sin();
					if name.ends_with("LayerNorm.weight") { 1.0 + 0.2 * noise } else { 0.5 * noise }
				})
				.collect();
			bytes.insert(name.clone(), data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
			values.insert(name.clone(), data);
		}
		let views = shapes.iter().map(|(name, shape)| {
			(name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), &bytes[name]).unwrap())
		});
		let file = safetensors::serialize(views, None).unwrap();
		(config, file, values)
	}

	/// BERT as Hugging Face computes it: a right-padded batch, an additive attention mask, masked
	/// mean pooling; plain loops, no fusion.
	fn reference_embeddings(config: &BertConfig, w: &BTreeMap<String, Vec<f32>>, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
		let (h, heads) = (config.hidden_size, config.num_attention_heads);
		let d = h / heads;
		let len = sequences.iter().map(|s| s.len()).max().unwrap();
		let linear = |x: &[Vec<f32>], name: &str| -> Vec<Vec<f32>> {
			let (weight, bias) = (&w[&format!("{name}.weight")], &w[&format!("{name}.bias")]);
			x.iter()
				.map(|row| {
					(0..bias.len())
						.map(|o| bias[o] + (0..row.len()).map(|k| row[k] * weight[o * row.len() + k]).sum::<f32>())
						.collect()
				})
				.collect()
		};
		let norm = |x: &mut [Vec<f32>], name: &str| {
			for row in x.iter_mut() {
				let mean = row.iter().sum::<f32>() / h as f32;
				let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / h as f32;
				for (c, v) in row.iter_mut().enumerate() {
					*v = (*v - mean) / (var + 1e-12).sqrt() * w[&format!("{name}.weight")][c] + w[&format!("{name}.bias")][c];
				}
			}
		};
		sequences
			.iter()
			.map(|seq| {
				let mask: Vec<f32> = (0..len).map(|p| if p < seq.len() { 0.0 } else { f32::MIN }).collect();
				let mut x: Vec<Vec<f32>> = (0..len)
					.map(|p| {
						let id = seq.get(p).copied().unwrap_or(0) as usize;
						(0..h)
							.map(|c| {
								w["embeddings.word_embeddings.weight"][id * h + c]
									+ w["embeddings.position_embeddings.weight"][p * h + c]
									+ w["embeddings.token_type_embeddings.weight"][c]
							})
							.collect()
					})
					.collect();
				norm(&mut x, "embeddings.LayerNorm");
				for n in 0..config.num_hidden_layers {
					let at = |part: &str| format!("encoder.layer.{n}.{part}");
					let (q, k, v) = (
						linear(&x, &at("attention.self.query")),
						linear(&x, &at("attention.self.key")),
						linear(&x, &at("attention.self.value")),
					);
					let mut context = vec![vec![0f32; h]; len];
					for head in 0..heads {
						for i in 0..len {
							let scores: Vec<f32> = (0..len)
								.map(|j| {
									(0..d).map(|c| q[i][head * d + c] * k[j][head * d + c]).sum::<f32>() / (d as f32).sqrt()
										+ mask[j]
								})
								.collect();
							let max = scores.iter().cloned().fold(f32::MIN, f32::max);
							let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
							let total: f32 = e.iter().sum();
							for c in 0..d {
								context[i][head * d + c] = (0..len).map(|j| e[j] / total * v[j][head * d + c]).sum();
							}
						}
					}
					let mut y = linear(&context, &at("attention.output.dense"));
					y.iter_mut().zip(&x).for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += x));
					norm(&mut y, &at("attention.output.LayerNorm"));
					x = y;
					let mut up = linear(&x, &at("intermediate.dense"));
					for v in up.iter_mut().flatten() {
						*v = 0.5 * *v * (1.0 + erf_by_quadrature(*v / std::f32::consts::SQRT_2));
					}
					let mut y = linear(&up, &at("output.dense"));
					y.iter_mut().zip(&x).for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += x));
					norm(&mut y, &at("output.LayerNorm"));
					x = y;
				}
				let mut mean = vec![0f32; h];
				for row in &x[..seq.len()] {
					mean.iter_mut().zip(row).for_each(|(m, v)| *m += v / seq.len() as f32);
				}
				let length = mean.iter().map(|m| m * m).sum::<f32>().sqrt();
				mean.iter().map(|m| m / length).collect()
			})
			.collect()
	}

	#[test]
	fn packed_forward_equals_a_padded_masked_batch() {
		let (config, file, weights) = tiny_bert("gelu");
		let encoder = BertEncoder::load(config.clone(), &file).unwrap();
		let sequences: [&[u32]; 4] = [&[1, 5, 9, 2], &[1, 3, 2], &[1, 10, 4, 4, 7, 6, 2], &[1, 2]];
		let expected = reference_embeddings(&config, &weights, &sequences);
		for split_products in [false, true] {
			let packed = encoder.embed(&sequences, split_products).unwrap();
			for (seq, (got, want)) in sequences.iter().zip(packed.iter().zip(&expected)) {
				for (g, w) in got.iter().zip(want) {
					assert!((g - w).abs() < 1e-5, "{seq:?} (split {split_products}): {got:?} vs {want:?}");
				}
				let alone = encoder.embed(&[seq], split_products).unwrap();
				assert_eq!(&alone[0], got, "{seq:?}: packing changed the vector");
			}
		}
	}

	#[test]
	fn bad_models_and_sequences_are_refused_with_a_reason() {
		let (config, file, _) = tiny_bert("relu");
		let err = BertEncoder::load(config, &file).err().unwrap().to_string();
		assert!(err.contains("hidden_act \"relu\""), "{err}");
		let (mut config, file, _) = tiny_bert("gelu");
		config.intermediate_size = 13;
		let err = format!("{:#}", BertEncoder::load(config, &file).err().unwrap());
		assert!(err.contains("intermediate.dense.weight has shape [12, 8], expected [13, 8]"), "{err}");
		let err = format!("{:#}", BertEncoder::load(tiny_bert("gelu").0, b"not safetensors").err().unwrap());
		assert!(err.contains("not a safetensors file"), "{err}");

		let (config, file, _) = tiny_bert("gelu");
		let encoder = BertEncoder::load(config, &file).unwrap();
		let refused = |seq: &[u32]| encoder.embed(&[&[1, 2], seq], false).err().unwrap().to_string();
		assert!(refused(&[]).contains("a sequence of 0 tokens (1 to 7 expected)"));
		assert!(refused(&[1; 8]).contains("a sequence of 8 tokens"));
		assert!(refused(&[1, 11, 2]).contains("token id 11 is outside the vocabulary of 11"));
		assert!(encoder.embed(&[], true).unwrap().is_empty());
	}
}
