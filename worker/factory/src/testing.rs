//! The fixture of the PEFT check: a tiny random Llama in HF layout and an adapter over it written
//! by [`LoraLayout::write_peft`], the same bytes on every machine (seeded weights, no training:
//! trained weights would differ in their last bits with the CPU's kernels). A script
//! (`scripts/factory/peft_reference.py`) loads them with PEFT + transformers and commits the
//! logits; the test holds this crate's and the engine's outputs to them.

use std::{path::Path, sync::Arc};

use anyhow::Result;
use candle_core::Device;
use openledger_engine::{
	model::{Llama, Projection},
	testing::{write_tiny_llama, TinyLlamaSpec},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::lora::LoraLayout;

/// The tokens the check scores.
pub const FIXTURE_TOKENS: [u32; 12] = [5, 17, 42, 99, 3, 250, 7, 61, 88, 140, 201, 33];

/// Writes the tiny model into `dir/base` and the adapter (rank 4, alpha 8, all seven
/// projections, `A` as PEFT initialises it, `B` seeded non-zero) into `dir/adapter`. Returns the
/// model, the layout and the adapter's weights.
pub fn write_peft_fixture(dir: &Path) -> Result<(Arc<Llama>, LoraLayout, Vec<f32>)> {
	let base = dir.join("base");
	write_tiny_llama(&base, &TinyLlamaSpec::default(), 7)?;
	let llama = Arc::new(Llama::from_hf_dir(&base, &Device::Cpu, |_, _| {})?);
	let layout = LoraLayout::new(&llama.config, 4, 8.0, &Projection::ALL)?;
	let mut params = layout.init(3);
	let mut rng = StdRng::seed_from_u64(4);
	for slot in layout.slots() {
		let (_, b) = layout.pair_mut(&mut params, slot);
		b.iter_mut().for_each(|w| *w = rng.random_range(-0.1f32..0.1));
	}
	let adapter = dir.join("adapter");
	std::fs::create_dir_all(&adapter)?;
	layout.write_peft(&adapter, &params, "tiny-llama")?;
	Ok((llama, layout, params))
}
