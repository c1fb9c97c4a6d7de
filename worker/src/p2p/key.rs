//! The libp2p identity file.

use std::path::Path;

use anyhow::{Context, Result};
use libp2p::identity;

/// The libp2p identity kept in `path` (protobuf-encoded ed25519, mode 600), made there on first
/// use, so the peer id others name in `--p2p-peer` survives restarts.
pub fn load_or_create_key(path: &Path) -> Result<identity::Keypair> {
	if path.exists() {
		let bytes = std::fs::read(path).with_context(|| format!("reading the p2p key {}", path.display()))?;
		return identity::Keypair::from_protobuf_encoding(&bytes)
			.with_context(|| format!("{} is not a libp2p key", path.display()));
	}
	let key = identity::Keypair::generate_ed25519();
	let bytes = key.to_protobuf_encoding().context("encoding the new p2p key")?;
	let mut options = std::fs::OpenOptions::new();
	options.write(true).create_new(true);
	#[cfg(unix)]
	std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
	std::io::Write::write_all(
		&mut options.open(path).with_context(|| format!("creating the p2p key {}", path.display()))?,
		&bytes,
	)?;
	tracing::info!(peer_id = %key.public().to_peer_id(), "new p2p key written to {}", path.display());
	Ok(key)
}
