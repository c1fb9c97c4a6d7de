//! Keys the worker holds: its account key (signs extrinsics: registration, stake, receipt
//! batches) and its sr25519 session key (signs receipts). Both come from a secret URI — a dev
//! name (`//Alice`), a 32-byte hex seed (`0x…`) or a BIP-39 phrase with an optional derivation
//! path — given in a file or an environment variable, never on the command line, and never
//! logged: `Debug` shows the public key only.

use std::{fmt, path::Path};

use openledger_primitives::ContentHash;
use polkadot_sdk::{
	sp_core::{crypto::Ss58Codec, sr25519, Pair},
	sp_runtime::AccountId32,
};

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
	#[error("reading the secret file {path}: {source}")]
	Read { path: String, source: std::io::Error },
	#[error("the secret file {0} is readable by other users; `chmod 600` it")]
	TooOpen(String),
	#[error("not a valid secret URI, hex seed or phrase (the secret itself is not shown)")]
	Invalid,
	#[error("`{0}` is not an SS58 account id")]
	InvalidAccount(String),
}

/// Reads a file that holds secrets (a key, the admin API key, the payers' API keys), refusing
/// one that other users can read.
pub fn read_secret_file(path: &Path) -> Result<String, KeyError> {
	let shown = path.display().to_string();
	#[cfg(unix)]
	{
		use std::os::unix::fs::PermissionsExt;
		let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
		if meta.permissions().mode() & 0o077 != 0 {
			return Err(KeyError::TooOpen(shown));
		}
	}
	std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: shown, source })
}

/// An sr25519 key pair, as sp-core's pair (receipts, vouchers) and as subxt's signer
/// (extrinsics), both from the same secret.
#[derive(Clone)]
pub struct Sr25519Key {
	pair: sr25519::Pair,
	signer: subxt_signer::sr25519::Keypair,
}

impl Sr25519Key {
	/// A key from a secret URI (`//Alice`, `0x<seed>`, a phrase, optionally `//path`).
	pub fn from_suri(suri: &str) -> Result<Self, KeyError> {
		let suri = suri.trim();
		let pair = sr25519::Pair::from_string(suri, None).map_err(|_| KeyError::Invalid)?;
		let uri = <subxt_signer::SecretUri as std::str::FromStr>::from_str(suri).map_err(|_| KeyError::Invalid)?;
		let signer = subxt_signer::sr25519::Keypair::from_uri(&uri).map_err(|_| KeyError::Invalid)?;
		// Both libraries must read the secret the same way, or receipts and extrinsics would be
		// signed by different keys.
		if signer.public_key().0 != pair.public().0 {
			return Err(KeyError::Invalid);
		}
		Ok(Self { pair, signer })
	}

	/// A key from a file holding its secret URI. On Unix the file must not be readable by
	/// group or others, as with ssh keys.
	pub fn from_file(path: &Path) -> Result<Self, KeyError> {
		Self::from_suri(&read_secret_file(path)?)
	}

	/// A fresh random key and its phrase (shown once to the operator, who stores it).
	pub fn generate() -> (Self, String) {
		let (_, phrase, _) = sr25519::Pair::generate_with_phrase(None);
		(Self::from_suri(&phrase).expect("a generated phrase is valid"), phrase)
	}

	pub fn public(&self) -> sr25519::Public {
		self.pair.public()
	}

	pub fn account(&self) -> AccountId32 {
		AccountId32::from(self.pair.public().0)
	}

	pub fn sign(&self, message: &[u8]) -> sr25519::Signature {
		self.pair.sign(message)
	}

	/// The same key as subxt's extrinsic signer.
	pub fn signer(&self) -> &subxt_signer::sr25519::Keypair {
		&self.signer
	}
}

impl fmt::Debug for Sr25519Key {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		write!(f, "Sr25519Key({})", self.public().to_ss58check())
	}
}

/// An account from its SS58 form (any network prefix) or `0x` + 64 hex digits.
pub fn parse_account(text: &str) -> Result<AccountId32, KeyError> {
	let text = text.trim();
	if let Some(hex) = text.strip_prefix("0x") {
		let mut bytes = [0u8; 32];
		if hex.len() == 64 && hex::decode_to_slice(hex, &mut bytes).is_ok() {
			return Ok(AccountId32::from(bytes));
		}
		return Err(KeyError::InvalidAccount(text.to_owned()));
	}
	AccountId32::from_ss58check(text).map_err(|_| KeyError::InvalidAccount(text.to_owned()))
}

/// `0x` + lowercase hex, as polkadot.js prints hashes.
pub fn hex_hash(hash: &ContentHash) -> String {
	format!("0x{}", hex::encode(hash.as_bytes()))
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn dev_uri_gives_the_well_known_account() {
		let alice = Sr25519Key::from_suri("//Alice").unwrap();
		assert_eq!(alice.account().to_ss58check(), "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY");
		assert_eq!(parse_account("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY").unwrap(), alice.account());
		assert_eq!(alice.signer().public_key().0, alice.public().0, "subxt's signer is the same key");
		let (fresh, phrase) = Sr25519Key::generate();
		assert_eq!(fresh.signer().public_key().0, Sr25519Key::from_suri(&phrase).unwrap().public().0);
	}

	#[test]
	fn debug_never_shows_the_secret() {
		let key = Sr25519Key::from_suri("//Bob").unwrap();
		let shown = format!("{key:?}");
		assert!(!shown.contains("Bob"), "{shown}");
		assert!(shown.contains(&key.public().to_ss58check()));
	}

	#[test]
	fn bad_secrets_and_accounts_are_refused() {
		assert!(matches!(Sr25519Key::from_suri("0x1234"), Err(KeyError::Invalid)));
		assert!(parse_account("0x12").is_err());
		assert!(parse_account("not-an-account").is_err());
	}

	#[cfg(unix)]
	#[test]
	fn world_readable_key_files_are_refused() {
		use std::os::unix::fs::PermissionsExt;
		let dir = tempfile::tempdir().unwrap();
		let path = dir.path().join("key");
		std::fs::write(&path, "//Charlie\n").unwrap();
		std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
		assert!(matches!(Sr25519Key::from_file(&path), Err(KeyError::TooOpen(_))));
		assert!(matches!(read_secret_file(&path), Err(KeyError::TooOpen(_))));
		std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
		assert!(matches!(read_secret_file(&path), Err(KeyError::TooOpen(_))), "group-readable is too open");
		std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
		assert_eq!(read_secret_file(&path).unwrap(), "//Charlie\n");
		let key = Sr25519Key::from_file(&path).unwrap();
		assert_eq!(key.account(), Sr25519Key::from_suri("//Charlie").unwrap().account());
	}
}
