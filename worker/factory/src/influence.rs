//! Per-item training attribution, TRAK/LESS-style: when an adapter is trained, each training
//! item's gradient of the adapter's weights is projected to a few hundred dimensions and stored
//! beside the adapter; for an answer, the gradient of its tokens' loss is projected the same way,
//! and the items whose projections point the same way (cosine) are the ones that taught it.
//!
//! Both gradients are taken at the adapter's *initial* weights (`A` from the run's seed, `B`
//! zero: nothing to store, any verifier can rebuild them). At the final weights the items the
//! adapter has learned have nearly no gradient left and the ranking is noise (2 of 5 planted
//! facts first, against 5 of 5 at the initial weights); LESS likewise takes its gradient
//! features early in training.
//!
//! The projection is a count sketch (each weight lands in one of `dim` buckets with a random
//! sign, both a hash of its index and the seed): a random projection that keeps inner products
//! in expectation, computed in one pass over the gradient with no matrix stored.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use openledger_primitives::{DataNetId, ItemId};
use serde::{Deserialize, Serialize};

use crate::{
	data::{pieces, TrainingItem},
	lora::{bytes, floats},
	model::{LoraModel, Sequence},
};

/// The file beside the adapter.
pub const SKETCH_FILE: &str = "influence_sketch.safetensors";
const SKETCH_FORMAT: &str = "openledger-influence-sketch/1";

/// The projection: its dimension and seed, and which layers' adapter weights it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SketchProjection {
	pub dim: usize,
	pub seed: u64,
	/// The first layer whose weights' gradients are sketched: the top layers only cost one
	/// forward pass and a short backward one.
	#[serde(default)]
	pub from_layer: usize,
}

impl SketchProjection {
	/// `grad` sketched to `dim` values, scaled to unit length (zero stays zero).
	pub fn project(&self, grad: &[f32]) -> Vec<f32> {
		self.project_tail(grad, 0)
	}

	/// [`Self::project`] of a gradient whose values before `start` are zero (only the tail read).
	fn project_tail(&self, grad: &[f32], start: usize) -> Vec<f32> {
		let mut out = vec![0f64; self.dim];
		for (i, &g) in grad.iter().enumerate().skip(start) {
			let h = splitmix(self.seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
			let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
			out[(h % self.dim as u64) as usize] += sign * g as f64;
		}
		let norm = out.iter().map(|v| v * v).sum::<f64>().sqrt();
		out.iter().map(|v| if norm > 0.0 { (v / norm) as f32 } else { 0.0 }).collect()
	}
}

fn splitmix(mut x: u64) -> u64 {
	x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
	x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
	x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
	x ^ (x >> 31)
}

/// The sketch of the gradient of a sequence's mean loss over its trained tokens, for the layers
/// the projection covers.
fn sketch(model: &LoraModel, params: &[f32], seq: &Sequence, projection: &SketchProjection) -> Result<Vec<f32>> {
	let targets = seq.target_count();
	ensure!(targets > 0, "nothing to score: no trained token");
	let mut grads = vec![0f32; params.len()];
	model.accumulate_from(projection.from_layer, params, seq, 1.0 / targets as f32, &mut grads)?;
	// Slots are laid out layer by layer: the covered layers are the vector's tail.
	let start = model.lora.slots().iter().find(|s| s.layer >= projection.from_layer).map_or(grads.len(), |s| s.offset);
	Ok(projection.project_tail(&grads, start))
}

/// Every item's projected gradient at `params`: of its mean loss over all its trained tokens,
/// its pieces of at most `max_len` tokens (as it was trained) side by side in one sequence.
/// Items with nothing to train on get no sketch; returns the sketched items' indexes and vectors.
pub fn item_sketches(model: &LoraModel, params: &[f32], items: &[TrainingItem], projection: SketchProjection, max_len: usize) -> Result<(Vec<usize>, Vec<Vec<f32>>)> {
	let mut sketched = Vec::new();
	let mut vectors = Vec::new();
	for (i, item) in items.iter().enumerate() {
		let mut seq = Sequence::default();
		for piece in pieces(std::slice::from_ref(item), max_len) {
			let range = piece.start..piece.start + piece.len;
			seq.push_piece(&item.tokens[range.clone()], &item.trained[range]);
		}
		if seq.target_count() == 0 {
			continue;
		}
		let vector = sketch(model, params, &seq, &projection).with_context(|| format!("sketching DataNet {} item {}", item.datanet, item.item))?;
		sketched.push(i);
		vectors.push(vector);
	}
	Ok((sketched, vectors))
}

/// The stored sketch: which items, and their projected gradients.
pub struct InfluenceSketch {
	pub projection: SketchProjection,
	pub items: Vec<(DataNetId, ItemId)>,
	/// `items.len() × dim`, row-major.
	pub vectors: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct Header {
	format: String,
	projection: SketchProjection,
	items: Vec<(DataNetId, ItemId)>,
}

impl InfluenceSketch {
	pub fn write(&self, dir: &Path) -> Result<()> {
		let header = Header { format: SKETCH_FORMAT.into(), projection: self.projection, items: self.items.clone() };
		let data = bytes(&self.vectors);
		let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![self.items.len(), self.projection.dim], &data)?;
		let metadata = [("openledger".to_string(), serde_json::to_string(&header)?)].into_iter().collect();
		let path = dir.join(SKETCH_FILE);
		safetensors::serialize_to_file([("sketch", view)], Some(metadata), &path).with_context(|| format!("writing {}", path.display()))
	}

	/// The sketch in `dir`, if the adapter has one.
	pub fn read(dir: &Path) -> Result<Option<Self>> {
		let path = dir.join(SKETCH_FILE);
		if !path.is_file() {
			return Ok(None);
		}
		let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
		let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
		let header: Header = meta
			.metadata()
			.as_ref()
			.and_then(|m| m.get("openledger"))
			.map(|h| serde_json::from_str(h))
			.transpose()?
			.with_context(|| format!("{} has no sketch header", path.display()))?;
		ensure!(header.format == SKETCH_FORMAT, "{} is not an influence sketch", path.display());
		let st = safetensors::SafeTensors::deserialize(&bytes)?;
		let t = st.tensor("sketch")?;
		ensure!(t.shape() == [header.items.len(), header.projection.dim], "{}: sketch of the wrong shape", path.display());
		let vectors = floats(t.data());
		Ok(Some(Self { projection: header.projection, items: header.items, vectors }))
	}

	/// The items that taught an answer: `answer` is the answer's tokens after `prompt`'s, scored
	/// by the cosine of each item's sketch with the answer's; the `top` best, best first.
	pub fn attribute(&self, model: &LoraModel, params: &[f32], prompt: &[u32], answer: &[u32], top: usize) -> Result<Vec<((DataNetId, ItemId), f32)>> {
		ensure!(!prompt.is_empty() && !answer.is_empty(), "an answer needs a prompt and tokens of its own");
		let tokens: Vec<u32> = prompt.iter().chain(answer).copied().collect();
		let trained: Vec<bool> = (0..tokens.len()).map(|i| i >= prompt.len()).collect();
		let mut seq = Sequence::default();
		seq.push_piece(&tokens, &trained);
		let query = sketch(model, params, &seq, &self.projection)?;
		ensure!(query.iter().any(|&v| v != 0.0), "the answer's gradient is zero over the sketched layers: nothing to rank by");
		let mut scored: Vec<((DataNetId, ItemId), f32)> = self
			.items
			.iter()
			.zip(self.vectors.chunks_exact(self.projection.dim))
			.map(|(&item, v)| (item, v.iter().zip(&query).map(|(a, b)| a * b).sum()))
			.collect();
		scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
		scored.truncate(top);
		Ok(scored)
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn the_sketch_keeps_directions() {
		let p = SketchProjection { dim: 256, seed: 1, from_layer: 0 };
		let a: Vec<f32> = (0..20_000).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
		let b: Vec<f32> = (0..20_000).map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5).collect();
		let cos = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
		let (pa, pb) = (p.project(&a), p.project(&b));
		assert!((cos(&pa, &pa) - 1.0).abs() < 1e-5);
		// Unrelated vectors stay near orthogonal; a vector and a noisy copy stay close.
		assert!(cos(&pa, &pb).abs() < 0.2, "{}", cos(&pa, &pb));
		let noisy: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + 0.3 * b).collect();
		assert!(cos(&pa, &p.project(&noisy)) > 0.9);
		assert_eq!(p.project(&a), pa, "deterministic");
		assert_ne!(SketchProjection { dim: 256, seed: 2, from_layer: 0 }.project(&a), pa);
	}
}
