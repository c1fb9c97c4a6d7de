//! A Llama decoder that runs a ragged batch: every step takes any number of sequences, each with
//! its own tokens (a prefill chunk or one decode token), position, KV cache and adapter, flattens
//! them into one `[tokens, hidden]` matrix for the projections, and splits them only for
//! attention. LoRA deltas are applied per run of rows that share an adapter.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{
	quantized::{gguf_file, QMatMul, QTensor},
	CpuStorage, DType, Device, Module, Result, Tensor, D,
};

use super::{
	decode_attention::{self, CacheView, Heads},
	dense::DenseMatrix,
	kv_pool::{KvCache, KvPool, KvShape},
	lora::{self, RowAdapters},
	paged_attention::DecodeBatch,
	quant::{self, QuantMatrix},
	rope::{Rope, StepAngles},
	LlamaConfig, LoraAdapter, Projection,
};

mod frozen;
pub use frozen::FrozenLayer;

/// A base projection `x · Wᵀ`: the worker's CPU kernels where they apply, candle otherwise.
enum BaseLinear {
	Quantized(QuantMatrix),
	Dense(DenseMatrix),
	Candle(QMatMul),
}

impl BaseLinear {
	fn from_qtensor(t: QTensor) -> Result<Self> {
		match QuantMatrix::from_qtensor(&t)? {
			Some(m) => Ok(Self::Quantized(m)),
			None => Ok(Self::Candle(QMatMul::from_qtensor(t)?)),
		}
	}

	fn from_float(w: Tensor) -> Result<Self> {
		match DenseMatrix::new(&w)? {
			Some(m) => Ok(Self::Dense(m)),
			None => Ok(Self::Candle(QMatMul::Tensor(w))),
		}
	}

	fn forward(&self, x: &Tensor) -> Result<Tensor> {
		match self {
			Self::Quantized(m) => m.forward(x),
			Self::Dense(m) => m.forward(x),
			Self::Candle(m) => m.forward(x),
		}
	}

	/// Weight rows `ids` as f32, `[ids.len(), in features]` on the CPU: token embeddings, looked
	/// up in a table stored like a projection, or in the output projection where they are tied.
	fn rows(&self, ids: &[u32]) -> Result<Tensor> {
		match self {
			Self::Quantized(m) => m.dequantize_rows(ids),
			Self::Dense(m) => m.rows(ids),
			Self::Candle(QMatMul::QTensor(t)) => quant::qtensor_rows(t, ids),
			Self::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
				t.index_select(&Tensor::new(ids, t.device())?, 0)?.to_dtype(DType::F32)
			},
		}
	}

	/// `x · Wᵀ` for `rows` rows of f32 input on the CPU, as a row-major vector.
	fn forward_rows(&self, xs: &[f32], rows: usize) -> Result<Vec<f32>> {
		match self {
			Self::Quantized(m) => m.matmul_rows(xs, rows),
			Self::Dense(m) => m.matmul_rows(xs, rows),
			Self::Candle(m) => {
				let x = Tensor::from_slice(xs, (rows, xs.len() / rows), &Device::Cpu)?;
				m.forward(&x)?.flatten_all()?.to_vec1()
			},
		}
	}

	/// [`Self::forward_rows`] of one input by several projections: in one dispatch where all
	/// are the worker's quantized matrices taking the same quantized input, else one by one.
	fn forward_rows_many(bases: &[&Self], xs: &[f32], rows: usize) -> Result<Vec<Vec<f32>>> {
		let quantized: Option<Vec<&QuantMatrix>> = bases
			.iter()
			.map(|base| match base {
				Self::Quantized(m) => Some(m),
				_ => None,
			})
			.collect();
		if let Some(quantized) = quantized {
			if let Some(outs) = QuantMatrix::matmul_rows_many(&quantized, xs, rows)? {
				return Ok(outs);
			}
		}
		bases.iter().map(|base| base.forward_rows(xs, rows)).collect()
	}
}

struct Layer {
	attn_norm: Tensor,
	ffn_norm: Tensor,
	/// Indexed by [`Projection::index`].
	proj: [BaseLinear; 7],
	/// The q, k and v projections' biases (Qwen 2).
	qkv_bias: Option<[Tensor; 3]>,
	/// The per-head RMS norms of q and k (Qwen 3, Gemma 3).
	qk_norm: Option<[Tensor; 2]>,
	/// The RMS norms of attention's and the MLP's outputs before the residual adds them (Gemma 3).
	post_norms: Option<[Tensor; 2]>,
}

/// The token embeddings. Quantized ones stay as the file stores them on the CPU, where only the
/// rows a step looks up are dequantized: Gemma 3's 262,144 × 640 table is 671 MB in f32.
enum Embeddings {
	/// The whole table as f32 on the device: float weights, and quantized ones on the GPU, where
	/// a lookup is one gather.
	Table(Tensor),
	/// Stored like a projection's weights.
	Stored(BaseLinear),
	/// The output projection's weights (tied embeddings).
	Tied,
}

/// Base weights, immutable after loading; shared by the engine thread and nothing else.
pub struct Llama {
	pub config: LlamaConfig,
	embeddings: Embeddings,
	layers: Vec<Layer>,
	norm: Tensor,
	lm_head: BaseLinear,
	rope: Rope,
	device: Device,
	/// Whether a step's one-token sequences share one batched attention op per layer (the GPU
	/// path) rather than the CPU's per-sequence loops.
	batched_decode: bool,
}

/// What a step that gathers its cache needs in every layer: its block table on the device, its
/// causal mask and its rows' rotary angles (`[n, head_dim / 2]`).
struct Gather {
	block_ids: Tensor,
	mask: Option<Tensor>,
	cos: Tensor,
	sin: Tensor,
}

/// One sequence's part of a step.
pub struct SeqStep<'a> {
	pub tokens: &'a [u32],
	pub cache: &'a mut KvCache,
	pub adapter: Option<&'a LoraAdapter>,
}

impl Llama {
	pub fn device(&self) -> &Device {
		&self.device
	}

	/// Runs decode steps through the batched paged-attention ops even on the CPU (where the
	/// per-sequence loops are the default), so tests cover the GPU's path on any machine.
	pub fn with_batched_decode(mut self, on: bool) -> Self {
		self.batched_decode = on;
		self
	}

	/// A paged key/value pool for this model on its device, for up to `max_tokens` cached
	/// tokens over all the sequences drawing on it.
	pub fn kv_pool(&self, max_tokens: usize) -> KvPool {
		let c = &self.config;
		KvPool::new(KvShape { num_layers: c.num_layers, kv_heads: c.num_kv_heads, head_dim: c.head_dim }, max_tokens, &self.device)
	}

	/// Loads a GGUF Llama (quantized or not). `progress` is called with (layers loaded, total).
	pub fn from_gguf(path: &Path, device: &Device, progress: impl FnMut(usize, usize)) -> anyhow::Result<Self> {
		let mut file =
			std::fs::File::open(path).with_context(|| format!("opening model {}", path.display()))?;
		let content = gguf_file::Content::read(&mut file)
			.map_err(|e| anyhow::anyhow!("{} is not a GGUF file: {e}", path.display()))?;
		Self::from_gguf_content(content, &mut file, device, progress)
	}

	/// [`Self::from_gguf`] from the file's metadata already read (`content`), its tensors from
	/// `file`: a caller that read the metadata for the tokenizer does not read it twice.
	pub fn from_gguf_content(
		mut content: gguf_file::Content,
		file: &mut std::fs::File,
		device: &Device,
		mut progress: impl FnMut(usize, usize),
	) -> anyhow::Result<Self> {
		let mut config = LlamaConfig::from_gguf(&content)?;
		// The tokenizer's arrays are read by the codec, not here: not kept while the weights load.
		content.metadata.retain(|key, _| !key.starts_with("tokenizer."));
		let arch = config.architecture;
		let tensor = |file: &mut std::fs::File, name: &str| {
			content
				.tensor(file, name, device)
				.with_context(|| format!("GGUF tensor `{name}` is missing or unreadable"))
		};
		// On the CPU, a projection the worker's kernels take is read straight into their layout.
		let projection = |file: &mut std::fs::File, name: &str| -> anyhow::Result<BaseLinear> {
			if let (true, Some(info)) = (device.is_cpu(), content.tensor_infos.get(name)) {
				let offset = content.tensor_data_offset + info.offset;
				let read = QuantMatrix::read(info.ggml_dtype, &info.shape, file, offset)
					.with_context(|| format!("reading GGUF tensor `{name}`"))?;
				if let Some(m) = read {
					return Ok(BaseLinear::Quantized(m));
				}
			}
			Ok(BaseLinear::from_qtensor(tensor(file, name)?)?)
		};
		// Without `output.weight`, the output projection is the embedding table (tied).
		let has_output = content.tensor_infos.contains_key("output.weight");
		let (embeddings, lm_head) = match (has_output, device.is_cpu()) {
			(_, false) => {
				let table = tensor(file, "token_embd.weight")?.dequantize(device)?;
				let head = projection(file, if has_output { "output.weight" } else { "token_embd.weight" })?;
				(Embeddings::Table(table), head)
			},
			(true, true) => {
				(Embeddings::Stored(projection(file, "token_embd.weight")?), projection(file, "output.weight")?)
			},
			(false, true) => (Embeddings::Tied, projection(file, "token_embd.weight")?),
		};
		let norm_vec = |t: candle_core::quantized::QTensor| t.dequantize(device);
		let norm = norm_vec(tensor(file, "output_norm.weight")?)?;
		// Llama 3's rope scaling, as llama.cpp's converter writes it.
		if let Ok(factors) = tensor(file, "rope_freqs.weight") {
			let factors = factors.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
			let scaled = match config.rope_freq_factors.take() {
				Some(linear) => factors.iter().zip(linear).map(|(a, b)| a * b).collect(),
				None => factors,
			};
			config.rope_freq_factors = Some(scaled);
			config = config.validated()?;
		}
		let mut layers = Vec::with_capacity(config.num_layers);
		for i in 0..config.num_layers {
			let mut q = |suffix: &str| projection(file, &format!("blk.{i}.{suffix}.weight"));
			let proj = [
				q("attn_q")?,
				q("attn_k")?,
				q("attn_v")?,
				q("attn_output")?,
				q("ffn_gate")?,
				q("ffn_up")?,
				q("ffn_down")?,
			];
			let mut vector = |name: &str| norm_vec(tensor(file, &format!("blk.{i}.{name}"))?).map_err(anyhow::Error::from);
			let qkv_bias = match arch.qkv_bias() {
				true => Some([vector("attn_q.bias")?, vector("attn_k.bias")?, vector("attn_v.bias")?]),
				false => None,
			};
			let qk_norm = match arch.qk_norm() {
				true => Some([vector("attn_q_norm.weight")?, vector("attn_k_norm.weight")?]),
				false => None,
			};
			// llama.cpp's converter has already added Gemma's 1 to its norm weights.
			let post_norms = match arch.post_norms() {
				true => Some([vector("post_attention_norm.weight")?, vector("post_ffw_norm.weight")?]),
				false => None,
			};
			layers.push(Layer {
				attn_norm: vector("attn_norm.weight")?,
				ffn_norm: vector("ffn_norm.weight")?,
				proj,
				qkv_bias,
				qk_norm,
				post_norms,
			});
			progress(i + 1, config.num_layers);
		}
		Self::assemble(config, embeddings, layers, norm, lm_head, device)
	}

	/// Loads an HF-layout float Llama: `config.json` and `model.safetensors` (f32, f16 or bf16;
	/// computed in f32).
	pub fn from_hf_dir(dir: &Path, device: &Device, mut progress: impl FnMut(usize, usize)) -> anyhow::Result<Self> {
		let json = std::fs::read_to_string(dir.join("config.json"))
			.with_context(|| format!("reading {}", dir.join("config.json").display()))?;
		let config = LlamaConfig::from_hf_json(&json)?;
		let weights = dir.join("model.safetensors");
		if !weights.is_file() {
			bail!("{} not found (only a single safetensors file is supported)", weights.display());
		}
		// Safety: the file is mapped read-only and not modified while the model loads.
		let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
		let c = &config;
		let embed = vb.get((c.vocab_size, c.hidden_size), "model.embed_tokens.weight")?;
		let (embeddings, lm_head) = match vb.contains_tensor("lm_head.weight") {
			true => (Embeddings::Table(embed), vb.get((c.vocab_size, c.hidden_size), "lm_head.weight")?),
			false if device.is_cpu() => (Embeddings::Tied, embed),
			false => (Embeddings::Table(embed.clone()), embed),
		};
		let mut layers = Vec::with_capacity(c.num_layers);
		for i in 0..c.num_layers {
			let lvb = vb.pp(format!("model.layers.{i}"));
			let mut proj = Vec::with_capacity(7);
			for p in Projection::ALL {
				let (fan_in, fan_out) = c.projection_dims(p);
				let w = lvb.get((fan_out, fan_in), &format!("{}.weight", p.module_path()))?;
				proj.push(BaseLinear::from_float(w)?);
			}
			let bias = |p: Projection| lvb.get(c.projection_dims(p).1, &format!("{}.bias", p.module_path()));
			let qkv_bias = match c.architecture.qkv_bias() {
				true => Some([bias(Projection::Q)?, bias(Projection::K)?, bias(Projection::V)?]),
				false => None,
			};
			let norm = |size: usize, name: &str| hf_norm(&lvb, c, size, name);
			let qk_norm = match c.architecture.qk_norm() {
				true => Some([norm(c.head_dim, "self_attn.q_norm.weight")?, norm(c.head_dim, "self_attn.k_norm.weight")?]),
				false => None,
			};
			// Gemma names its four norms by place: the MLP's input norm is `pre_feedforward`.
			let (ffn_norm, post_norms) = match c.architecture.post_norms() {
				true => (
					norm(c.hidden_size, "pre_feedforward_layernorm.weight")?,
					Some([norm(c.hidden_size, "post_attention_layernorm.weight")?, norm(c.hidden_size, "post_feedforward_layernorm.weight")?]),
				),
				false => (norm(c.hidden_size, "post_attention_layernorm.weight")?, None),
			};
			layers.push(Layer {
				attn_norm: norm(c.hidden_size, "input_layernorm.weight")?,
				ffn_norm,
				proj: proj.try_into().map_err(|_| anyhow::anyhow!("seven projections"))?,
				qkv_bias,
				qk_norm,
				post_norms,
			});
			progress(i + 1, c.num_layers);
		}
		let norm = hf_norm(&vb, c, c.hidden_size, "model.norm.weight")?;
		Self::assemble(config, embeddings, layers, norm, BaseLinear::from_float(lm_head)?, device)
	}

	fn assemble(
		config: LlamaConfig,
		embeddings: Embeddings,
		layers: Vec<Layer>,
		norm: Tensor,
		lm_head: BaseLinear,
		device: &Device,
	) -> anyhow::Result<Self> {
		// The GPU's attention kernels know neither windows nor other scales yet.
		if config.architecture == crate::model::Architecture::Gemma3 && !device.is_cpu() {
			bail!("Gemma 3 (sliding-window attention) runs on the CPU only for now; serve it with --device cpu");
		}
		Ok(Self {
			rope: Rope::new(&config),
			config,
			embeddings,
			layers,
			norm,
			lm_head,
			device: device.clone(),
			batched_decode: !device.is_cpu(),
		})
	}

	/// One step over a ragged batch. Steps that share an adapter should be adjacent (the engine
	/// orders them so): on the CPU and CUDA every row takes its own LoRA delta, elsewhere each run
	/// of equal adapters costs one pair of LoRA matmuls per projection.
	/// Returns the logits of each sequence's last token, `[steps.len(), vocab]`, and advances
	/// every cache by its step's tokens. A cache whose pool cannot hold the new tokens fails the
	/// step; the engine reserves them beforehand ([`KvCache::reserve`]) to choose what waits.
	pub fn forward<'a>(&self, steps: &mut [SeqStep<'a>]) -> Result<Tensor> {
		let c = &self.config;
		let mut tokens = Vec::new();
		let mut adapters = RowAdapters::default();
		let mut spans = Vec::with_capacity(steps.len());
		for step in steps.iter_mut() {
			if step.tokens.is_empty() {
				candle_core::bail!("a sequence step has no tokens");
			}
			if step.cache.len() + step.tokens.len() > c.max_position {
				candle_core::bail!("sequence longer than the context length {}", c.max_position);
			}
			step.cache.reserve(step.tokens.len()).map_err(candle_core::Error::wrap)?;
			let start = tokens.len();
			tokens.extend_from_slice(step.tokens);
			spans.push((start, step.tokens.len(), step.cache.len()));
			adapters.push(step.tokens.len(), step.adapter);
		}
		adapters.prepare(&self.device)?;
		let angles = self.rope.step(&spans);
		// One-token steps whose caches share a pool attend together, on the GPU path.
		let decoding: Vec<(usize, usize, &KvCache)> = steps
			.iter()
			.zip(&spans)
			.enumerate()
			.filter(|(_, (step, _))| step.tokens.len() == 1)
			.map(|(i, (step, &(start, _, _)))| (i, start, &*step.cache))
			.collect();
		let longest = decoding.iter().map(|(_, _, c)| c.len() + 1).max().unwrap_or(0);
		let decode = match decoding.first() {
			Some((_, _, first))
				if self.batched_decode && c.sliding_window.is_none() &&
					decoding.iter().all(|(_, _, c)| c.same_pool(first)) &&
					DecodeBatch::takes(&self.device, longest, c.head_dim) =>
			{
				Some(DecodeBatch::new(&decoding, &angles.global, &self.device)?)
			},
			_ => None,
		};
		let batched = |i: usize| decode.as_ref().is_some_and(|d| d.steps.binary_search(&i).is_ok());
		// Block tables for the steps that gather their cache (on the GPU, all but the batched
		// decode steps; the CPU attends in loops), made once per step for every layer.
		let gathers = steps
			.iter()
			.zip(&spans)
			.enumerate()
			.map(|(i, (step, &(start, n, pos)))| {
				if batched(i) || self.device.is_cpu() {
					return Ok(None);
				}
				let block_ids = Tensor::new(step.cache.blocks(), &self.device)?;
				let (cos, sin) = angles.global.rows(start, n);
				let shape = (n, angles.global.half());
				Ok(Some(Gather {
					block_ids,
					mask: self.causal_mask(n, pos)?,
					cos: Tensor::from_slice(cos, shape, &self.device)?,
					sin: Tensor::from_slice(sin, shape, &self.device)?,
				}))
			})
			.collect::<Result<Vec<_>>>()?;
		let mut x = self.embed(&tokens)?;
		let eps = c.rms_norm_eps as f32;
		for (l, layer) in self.layers.iter().enumerate() {
			let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
			let (q, k, v) = self.attention_inputs(layer, l, &h, &adapters)?;
			let decoded = decode
				.as_ref()
				.map(|batch| self.decode_attention(batch, steps[batch.steps[0]].cache, l, &q, &k, &v))
				.transpose()?;
			let attn = match &decoded {
				// Every step decoded together: the batch's rows are the step's rows, in order.
				Some(all) if all.dim(0)? == steps.len() => all.clone(),
				_ => {
					let mut outs = Vec::with_capacity(steps.len());
					let mut next_decoded = 0;
					for (i, ((step, &(start, n, pos)), gather)) in steps.iter().zip(spans.iter()).zip(&gathers).enumerate() {
						match &decoded {
							Some(decoded) if batched(i) => {
								outs.push(decoded.narrow(0, next_decoded, 1)?);
								next_decoded += 1;
							},
							_ => {
								let rows = |t: &Tensor| t.narrow(0, start, n);
								let qkv = [rows(&q)?, rows(&k)?, rows(&v)?];
								let cpu_angles = (&angles, start);
								outs.push(self.attention(&*step.cache, gather.as_ref(), cpu_angles, l, &qkv, pos)?);
							},
						}
					}
					if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::cat(&outs, 0)? }
				},
			};
			let post_norm = |t: Tensor, i: usize| match &layer.post_norms {
				Some(norms) => candle_nn::ops::rms_norm(&t, &norms[i], eps),
				None => Ok(t),
			};
			x = (x + post_norm(self.project(layer, l, Projection::O, &attn, &adapters)?, 0)?)?;
			let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
			let [gate, up] = self.project_many(layer, l, [Projection::Gate, Projection::Up], &h, &adapters)?;
			let gate = if c.architecture.gelu_gate() { gate.gelu()? } else { candle_nn::ops::silu(&gate)? };
			let act = (gate * up)?;
			x = (x + post_norm(self.project(layer, l, Projection::Down, &act, &adapters)?, 1)?)?;
		}
		for (step, &(_, n, _)) in steps.iter_mut().zip(spans.iter()) {
			step.cache.advance(n);
		}
		let last: Vec<u32> = spans.iter().map(|&(start, n, _)| (start + n - 1) as u32).collect();
		let last = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
		let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
		let logits = self.lm_head.forward(&last)?;
		match c.final_logit_softcap {
			Some(cap) => (logits / cap as f64)?.tanh()? * cap as f64,
			None => Ok(logits),
		}
	}

	/// The embeddings of `tokens`, `[tokens, hidden]`; Gemma scales them by √hidden.
	fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
		let rows = match &self.embeddings {
			Embeddings::Table(table) => table.index_select(&Tensor::new(tokens, &self.device)?, 0)?,
			Embeddings::Stored(table) => table.rows(tokens)?,
			Embeddings::Tied => self.lm_head.rows(tokens)?,
		};
		match self.config.architecture.scaled_embeddings() {
			true => rows * (self.config.hidden_size as f64).sqrt(),
			false => Ok(rows),
		}
	}

	/// The q, k and v rows of a layer's attention, before the rotary embedding: the projections
	/// with their LoRA deltas, then the family's bias (Qwen 2) or per-head norm (Qwen 3).
	fn attention_inputs(&self, layer: &Layer, l: usize, h: &Tensor, adapters: &RowAdapters) -> Result<(Tensor, Tensor, Tensor)> {
		let c = &self.config;
		let [mut q, mut k, mut v] = self.project_many(layer, l, [Projection::Q, Projection::K, Projection::V], h, adapters)?;
		if let Some([bq, bk, bv]) = &layer.qkv_bias {
			q = q.broadcast_add(bq)?;
			k = k.broadcast_add(bk)?;
			v = v.broadcast_add(bv)?;
		}
		if let Some([q_norm, k_norm]) = &layer.qk_norm {
			let per_head = |t: Tensor, norm: &Tensor| -> Result<Tensor> {
				let (rows, width) = t.dims2()?;
				let heads = t.reshape((rows * width / c.head_dim, c.head_dim))?;
				candle_nn::ops::rms_norm(&heads, norm, c.rms_norm_eps as f32)?.reshape((rows, width))
			};
			q = per_head(q, q_norm)?;
			k = per_head(k, k_norm)?;
		}
		Ok((q, k, v))
	}

	/// `W·x` for all rows, plus each row's LoRA delta.
	fn project(&self, layer: &Layer, l: usize, projection: Projection, x: &Tensor, adapters: &RowAdapters) -> Result<Tensor> {
		let [out] = self.project_many(layer, l, [projection], x, adapters)?;
		Ok(out)
	}

	/// [`Self::project`] for several projections of the same input (q, k and v; gate and up).
	fn project_many<const N: usize>(
		&self,
		layer: &Layer,
		l: usize,
		projections: [Projection; N],
		x: &Tensor,
		adapters: &RowAdapters,
	) -> Result<[Tensor; N]> {
		let bases = projections.map(|p| &layer.proj[p.index()]);
		if !self.device.is_cpu() {
			let mut outs = Vec::with_capacity(N);
			for (base, projection) in bases.iter().zip(projections) {
				outs.push(adapters.add_deltas(base.forward(x)?, x, l, projection)?);
			}
			return Ok(outs.try_into().expect("one output per projection"));
		}
		// On the CPU the projections share one dispatch of the pool (see `forward_rows_many`),
		// and the deltas are added in place, row by row, to the base outputs: no per-group
		// slicing and concatenation of tensors.
		let (rows, in_features) = x.dims2()?;
		let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
		let outs = BaseLinear::forward_rows_many(&bases, &xs, rows)?;
		let mut tensors = Vec::with_capacity(N);
		for (mut out, projection) in outs.into_iter().zip(projections) {
			let out_features = out.len() / rows;
			lora::add_row_deltas(&xs, in_features, &mut out, out_features, &adapters.row_weights(l, projection))?;
			tensors.push(Tensor::from_vec(out, (rows, out_features), &self.device)?);
		}
		Ok(tensors.try_into().expect("one output per projection"))
	}

	/// The causal mask of `n` new rows at position `pos` for every query head of a kv group,
	/// `[1, rep·n, pos + n]` (made once per step, used by every layer); `None` for one row.
	fn causal_mask(&self, n: usize, pos: usize) -> Result<Option<Tensor>> {
		if n == 1 {
			return Ok(None);
		}
		let (rep, total) = (self.config.num_heads / self.config.num_kv_heads, pos + n);
		let mut mask = vec![0f32; rep * n * total];
		for r in 0..rep {
			for t in 0..n {
				let row = (r * n + t) * total;
				mask[row + pos + t + 1..row + total].fill(f32::NEG_INFINITY);
			}
		}
		Tensor::from_vec(mask, (1, rep * n, total), &self.device).map(Some)
	}

	/// Attention of a step's batched one-token sequences (`q`, `k`, `v`: the whole step's rows):
	/// rotary embedding at each one's position, new keys and values written into the paged pool,
	/// and attention read from it, a few ops for all of them. Returns `[S, heads · head_dim]`.
	fn decode_attention(&self, batch: &DecodeBatch, cache: &KvCache, l: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
		let c = &self.config;
		let (count, hd) = (batch.steps.len(), c.head_dim);
		let pick = |t: &Tensor, heads: usize| t.index_select(&batch.rows, 0)?.reshape((count, heads, 1, hd));
		let rope = |t: Tensor, heads: usize| -> Result<Tensor> {
			let t = if c.rope_interleaved {
				candle_nn::rotary_emb::rope_i(&t, &batch.cos, &batch.sin)?
			} else {
				candle_nn::rotary_emb::rope(&t, &batch.cos, &batch.sin)?
			};
			t.reshape((count, heads, hd))
		};
		let q = rope(pick(q, c.num_heads)?, c.num_heads)?;
		let k = rope(pick(k, c.num_kv_heads)?, c.num_kv_heads)?;
		let v = pick(v, c.num_kv_heads)?.reshape((count, c.num_kv_heads, hd))?;
		let (k_pool, v_pool) = cache.layer_pools(l)?;
		batch.write(&k_pool, &k)?;
		batch.write(&v_pool, &v)?;
		batch.attend(&q, &k_pool, &v_pool)
	}

	/// Causal self-attention of one sequence's `n` new rows (`qkv`) at position `pos` against
	/// its cache: gathered from it on the GPU, in loops on the CPU, where the rows' angles are
	/// those of the step's rows from `start` in `angles`. Query heads are grouped by the
	/// key/value head they share, so grouped-query attention needs no copy of the keys.
	fn attention(
		&self,
		cache: &KvCache,
		gather: Option<&Gather>,
		(angles, start): (&StepAngles, usize),
		l: usize,
		[q, k, v]: &[Tensor; 3],
		pos: usize,
	) -> Result<Tensor> {
		let c = &self.config;
		let (n, hd, nh, nkv) = (q.dim(0)?, c.head_dim, c.num_heads, c.num_kv_heads);
		let Some(gather) = gather else {
			let (cos, sin) = angles.of_layer(c.window_of(l).is_some()).rows(start, n);
			return self.attention_in_loops(cache, l, [q, k, v], (cos, sin), pos);
		};
		let rep = nh / nkv;
		let (cos, sin) = (&gather.cos, &gather.sin);
		let rope = |t: &Tensor, heads: usize| -> Result<Tensor> {
			let t = t.reshape((n, heads, hd))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
			let t = if c.rope_interleaved {
				candle_nn::rotary_emb::rope_i(&t, cos, sin)?
			} else {
				candle_nn::rotary_emb::rope(&t, cos, sin)?
			};
			t.squeeze(0)
		};
		let q = rope(q, nh)?; // [nh, n, hd]
		let k = rope(k, nkv)?; // [nkv, n, hd]
		let v = v.reshape((n, nkv, hd))?.transpose(0, 1)?;
		cache.write(l, &k, &v)?;
		// A first chunk has nothing cached before it: attend to its own rows, no gather.
		let (k_all, v_all) = match pos {
			0 => (k, v.contiguous()?),
			_ => cache.gather(l, &gather.block_ids, pos + n)?, // [nkv, pos + n, hd]
		};
		// Heads h = g·rep + r use kv head g: rows of one group are (r, t) pairs.
		let q = q.reshape((nkv, rep * n, hd))?;
		let scale = c.attention_scale as f64;
		let mut att = (q.matmul(&k_all.t()?)? * scale)?; // [nkv, rep·n, pos + n]
		if let Some(mask) = &gather.mask {
			att = att.broadcast_add(mask)?;
		}
		let att = candle_nn::ops::softmax_last_dim(&att)?;
		let out = att.matmul(&v_all)?; // [nkv, rep·n, hd] = [nh, n, hd]
		out.reshape((nh, n, hd))?.transpose(0, 1)?.reshape((n, nh * hd))
	}

	/// [`Self::attention`] on the CPU (every step there): rotary embedding (`cos`, `sin`: a row
	/// of `head_dim / 2` for each of the `n` rows) and attention over the cache in plain loops,
	/// one token at a time, reading the cache in place. Each token's result is the same whatever
	/// the chunk it came in (see [`decode_attention`]).
	fn attention_in_loops(
		&self,
		cache: &KvCache,
		l: usize,
		[q, k, v]: [&Tensor; 3],
		(cos_rows, sin_rows): (&[f32], &[f32]),
		pos: usize,
	) -> Result<Tensor> {
		let c = &self.config;
		let (n, hd, nh, nkv) = (q.dim(0)?, c.head_dim, c.num_heads, c.num_kv_heads);
		let half = hd / 2;
		let mut q = q.flatten_all()?.to_vec1::<f32>()?;
		let mut k = k.flatten_all()?.to_vec1::<f32>()?;
		let window = c.window_of(l);
		for (t, (q_row, k_row)) in q.chunks_exact_mut(nh * hd).zip(k.chunks_exact_mut(nkv * hd)).enumerate() {
			let (cos, sin) = (&cos_rows[t * half..][..half], &sin_rows[t * half..][..half]);
			decode_attention::rope_in_place(q_row, hd, cos, sin, c.rope_interleaved);
			decode_attention::rope_in_place(k_row, hd, cos, sin, c.rope_interleaved);
		}
		let k = Tensor::from_vec(k, (n, nkv, hd), &self.device)?.transpose(0, 1)?;
		let v = v.reshape((n, nkv, hd))?.transpose(0, 1)?;
		cache.write(l, &k, &v)?;
		let (pool_k, pool_v) = cache.layer_pools(l)?;
		let (k_storage, k_layout) = pool_k.storage_and_layout();
		let (v_storage, v_layout) = pool_v.storage_and_layout();
		let (candle_core::Storage::Cpu(CpuStorage::F32(k_data)), candle_core::Storage::Cpu(CpuStorage::F32(v_data))) =
			(&*k_storage, &*v_storage)
		else {
			candle_core::bail!("the key/value cache is not f32 on the CPU");
		};
		let keys = CacheView { data: &k_data[k_layout.start_offset()..], blocks: cache.blocks() };
		let values = CacheView { data: &v_data[v_layout.start_offset()..], blocks: cache.blocks() };
		let heads = Heads { query_heads: nh, kv_heads: nkv, head_dim: hd, len: pos + n, window, scale: c.attention_scale };
		let out = decode_attention::attend(&q, n, &keys, &values, &heads);
		Tensor::from_vec(out, (n, nh * hd), &self.device)
	}

	/// Vocabulary logits for `tokens` run alone from an empty cache: the reference path tests
	/// compare batched results against.
	pub fn logits_alone(&self, tokens: &[u32], adapter: Option<&LoraAdapter>) -> Result<Tensor> {
		let mut cache = self.kv_pool(tokens.len()).cache();
		let mut steps = [SeqStep { tokens, cache: &mut cache, adapter }];
		self.forward(&mut steps)?.squeeze(0)
	}
}

/// Greedy index of the largest logit (ties to the lowest id).
pub fn argmax(logits: &Tensor) -> Result<u32> {
	logits.argmax(D::Minus1)?.to_scalar::<u32>()
}

/// An HF norm weight; Gemma stores it as an offset from 1 (its RMS norm multiplies by 1 + w).
fn hf_norm(vb: &candle_nn::VarBuilder, config: &LlamaConfig, size: usize, name: &str) -> Result<Tensor> {
	let w = vb.get(size, name)?;
	match config.architecture.hf_norms_offset_from_one() {
		true => w + 1.0,
		false => Ok(w),
	}
}
