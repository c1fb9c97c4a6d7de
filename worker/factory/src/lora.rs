//! The trainable LoRA weights: every (layer, target projection) pair's `A` `[rank, in]` and `B`
//! `[out, rank]`, held in one flat f32 vector so that gradients, the optimizer's moments and
//! checkpoints are vectors of the same layout. Written out in PEFT's format.

use std::{collections::BTreeSet, fs, io::Write, path::Path};

use anyhow::{ensure, Context, Result};
use openledger_engine::{
	adapters::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE},
	model::{LlamaConfig, Projection},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Where one projection's `A` and `B` lie in the flat vector (`B` right after `A`).
#[derive(Clone, Copy, Debug)]
pub struct Slot {
	pub layer: usize,
	pub projection: Projection,
	pub in_features: usize,
	pub out_features: usize,
	pub offset: usize,
}

impl Slot {
	fn a_len(&self, rank: usize) -> usize {
		rank * self.in_features
	}
	fn len(&self, rank: usize) -> usize {
		rank * (self.in_features + self.out_features)
	}
}

/// The adapter's shape: rank, scale and which projections of which layers it adapts.
#[derive(Clone, Debug)]
pub struct LoraLayout {
	pub rank: usize,
	pub alpha: f64,
	pub targets: Vec<Projection>,
	slots: Vec<Slot>,
	/// `by_layer[l][projection.index()]`: the slot's index in `slots`.
	by_layer: Vec<[Option<usize>; 7]>,
	len: usize,
	/// GGUF Llama weights have q's and k's rows permuted for the interleaved rotary embedding
	/// (llama.cpp's converter): `B` of q and k trains in that order and is written back in
	/// HF's. The query and key heads, where so.
	gguf_heads: Option<(usize, usize)>,
}

/// One slot's `A` and `B`, borrowed from a flat vector.
pub struct Pair<'a> {
	pub a: &'a [f32],
	pub b: &'a [f32],
}

impl LoraLayout {
	pub fn new(config: &LlamaConfig, rank: usize, alpha: f64, targets: &[Projection]) -> Result<Self> {
		ensure!(rank > 0, "rank must be positive");
		ensure!(alpha.is_finite() && alpha > 0.0, "lora_alpha must be a positive number");
		let targets: Vec<Projection> = targets.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
		ensure!(!targets.is_empty(), "no target modules");
		let (mut slots, mut by_layer, mut len) = (Vec::new(), Vec::new(), 0);
		for layer in 0..config.num_layers {
			let mut row = [None; 7];
			for &projection in &targets {
				let (in_features, out_features) = config.projection_dims(projection);
				let slot = Slot { layer, projection, in_features, out_features, offset: len };
				len += slot.len(rank);
				row[projection.index()] = Some(slots.len());
				slots.push(slot);
			}
			by_layer.push(row);
		}
		let gguf_heads = config.rope_interleaved.then_some((config.num_heads, config.num_kv_heads));
		Ok(Self { rank, alpha, targets, slots, by_layer, len, gguf_heads })
	}

	/// What the adapter's product is multiplied by (PEFT's `lora_alpha / r`).
	pub fn scale(&self) -> f32 {
		(self.alpha / self.rank as f64) as f32
	}

	/// Number of trainable weights.
	pub fn len(&self) -> usize {
		self.len
	}

	pub fn is_empty(&self) -> bool {
		self.len == 0
	}

	pub fn slots(&self) -> &[Slot] {
		&self.slots
	}

	pub fn slot(&self, layer: usize, projection: Projection) -> Option<&Slot> {
		self.by_layer[layer][projection.index()].map(|i| &self.slots[i])
	}

	/// `slot`'s `A` and `B` in `values`.
	pub fn pair<'a>(&self, values: &'a [f32], slot: &Slot) -> Pair<'a> {
		let (a, b) = values[slot.offset..slot.offset + slot.len(self.rank)].split_at(slot.a_len(self.rank));
		Pair { a, b }
	}

	/// `slot`'s `A` and `B` in `values`, mutably.
	pub fn pair_mut<'a>(&self, values: &'a mut [f32], slot: &Slot) -> (&'a mut [f32], &'a mut [f32]) {
		values[slot.offset..slot.offset + slot.len(self.rank)].split_at_mut(slot.a_len(self.rank))
	}

	/// PEFT's initial weights: `A` uniform in ±1/√in (its Kaiming default), `B` zero, so the
	/// adapter starts as the base model. The same seed gives the same weights.
	pub fn init(&self, seed: u64) -> Vec<f32> {
		let mut rng = StdRng::seed_from_u64(seed);
		let mut values = vec![0f32; self.len];
		for slot in &self.slots {
			let bound = 1.0 / (slot.in_features as f32).sqrt();
			let (a, _) = self.pair_mut(&mut values, slot);
			a.iter_mut().for_each(|w| *w = rng.random_range(-bound..bound));
		}
		values
	}

	/// Writes `values` as a PEFT adapter into `dir` (which must exist): `adapter_model.safetensors`
	/// with PEFT's tensor names and `adapter_config.json`.
	pub fn write_peft(&self, dir: &Path, values: &[f32], base_model: &str) -> Result<()> {
		ensure!(values.len() == self.len, "{} weights for a layout of {}", values.len(), self.len);
		let mut tensors = Vec::with_capacity(self.slots.len() * 2);
		for slot in &self.slots {
			let Pair { a, b } = self.pair(values, slot);
			let b = match (self.gguf_heads, slot.projection) {
				(Some((heads, _)), Projection::Q) | (Some((_, heads)), Projection::K) => hf_row_order(b, heads, self.rank),
				_ => b.to_vec(),
			};
			let prefix = format!("base_model.model.model.layers.{}.{}", slot.layer, slot.projection.module_path());
			tensors.push((format!("{prefix}.lora_A.weight"), vec![self.rank, slot.in_features], bytes(a)));
			tensors.push((format!("{prefix}.lora_B.weight"), vec![slot.out_features, self.rank], bytes(&b)));
		}
		let views = tensors
			.iter()
			.map(|(name, shape, data)| {
				let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)?;
				Ok((name.as_str(), view))
			})
			.collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
		// PEFT's loader reads the metadata's format; transformers refuses files without it.
		let metadata = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
		let weights = dir.join(ADAPTER_WEIGHTS_FILE);
		safetensors::serialize_to_file(views, metadata, &weights).with_context(|| format!("writing {}", weights.display()))?;
		let config = serde_json::json!({
			"peft_type": "LORA",
			"task_type": "CAUSAL_LM",
			"base_model_name_or_path": base_model,
			"r": self.rank,
			"lora_alpha": self.alpha,
			"lora_dropout": 0.0,
			"target_modules": self.targets.iter().map(|p| p.peft_name()).collect::<Vec<_>>(),
			"bias": "none",
			"fan_in_fan_out": false,
			"use_rslora": false,
			"use_dora": false,
			"inference_mode": true,
		});
		let path = dir.join(ADAPTER_CONFIG_FILE);
		let mut file = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
		file.write_all((serde_json::to_string_pretty(&config)? + "\n").as_bytes())?;
		file.sync_all()?;
		Ok(())
	}
}

/// Rows of `b` (`[heads · head_dim, cols]`) from GGUF's interleaved order back to HF's: GGUF's
/// row `h·hd + 2i + j` is HF's row `h·hd + j·hd/2 + i` (the inverse of the engine's
/// `permute_rows_for_gguf`).
fn hf_row_order(b: &[f32], heads: usize, cols: usize) -> Vec<f32> {
	let rows = b.len() / cols;
	let (hd, half) = (rows / heads, rows / heads / 2);
	let mut out = vec![0f32; b.len()];
	for h in 0..heads {
		for i in 0..half {
			for j in 0..2 {
				let (gguf, hf) = (h * hd + 2 * i + j, h * hd + j * half + i);
				out[hf * cols..][..cols].copy_from_slice(&b[gguf * cols..][..cols]);
			}
		}
	}
	out
}

/// Little-endian bytes of `values`, as safetensors stores f32.
pub fn bytes(values: &[f32]) -> Vec<u8> {
	values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The f32 values of safetensors' little-endian bytes: the inverse of [`bytes`].
pub fn floats(bytes: &[u8]) -> Vec<f32> {
	bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
}

#[cfg(test)]
mod tests {
	use candle_core::{Device, Tensor};
	use openledger_engine::adapters::permute_rows_for_gguf;

	#[test]
	fn hf_row_order_undoes_the_gguf_permutation() {
		let (heads, hd, cols) = (3, 8, 2);
		let hf: Vec<f32> = (0..heads * hd * cols).map(|i| i as f32).collect();
		let gguf = permute_rows_for_gguf(&Tensor::from_vec(hf.clone(), (heads * hd, cols), &Device::Cpu).unwrap(), heads).unwrap();
		let gguf = gguf.flatten_all().unwrap().to_vec1::<f32>().unwrap();
		assert_ne!(gguf, hf);
		assert_eq!(super::hf_row_order(&gguf, heads, cols), hf);
	}
}
