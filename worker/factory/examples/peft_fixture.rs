//! Writes the PEFT check's fixture (`openledger_factory::testing`) into the directory given.

fn main() -> anyhow::Result<()> {
	let dir = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: peft_fixture DIR"))?;
	openledger_factory::testing::write_peft_fixture(std::path::Path::new(&dir))?;
	Ok(())
}
