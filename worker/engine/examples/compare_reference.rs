//! Compares this engine's logits with candle-transformers' `quantized_llama` on the same GGUF,
//! and prints greedy answers to a few questions.
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use openledger_engine::{
	base::{find_default_model, BaseModel},
	model::{llama::argmax, SeqStep},
	tokenizer::ChatMessage,
};

fn main() -> anyhow::Result<()> {
	let path = find_default_model()?;
	let base = BaseModel::load(&path, None, &Device::Cpu)?;
	let mut file = std::fs::File::open(&path)?;
	let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
	let mut reference = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
	for q in std::env::args().skip(1) {
		let text = base.codec.render_chat(&[ChatMessage::new("user", q.as_str())], true)?;
		let ids = base.codec.encode(&text)?;
		let mine = base.model.logits_alone(&ids, None)?;
		let theirs = reference.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?, 0)?.squeeze(0)?;
		let diff = (&mine - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
		let mut cache = base.model.kv_pool(base.config.max_position).cache();
		let mut input = ids.clone();
		let mut out = Vec::new();
		for _ in 0..40 {
			let logits = base.model.forward(&mut [SeqStep { tokens: &input, cache: &mut cache, adapter: None }])?;
			let t = argmax(&logits.squeeze(0)?)?;
			if base.codec.is_eos(t) {
				break;
			}
			out.push(t);
			input = vec![t];
		}
		println!("{q} [prefill diff vs candle {diff}] => {:?}", base.codec.decode(&out)?);
	}
	Ok(())
}
