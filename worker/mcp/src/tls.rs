//! How an https endpoint's certificate is checked: against the system's roots and any CA the
//! operator adds. The TLS configuration is built once per [`TrustedRoots`] and shared by every
//! session: building it reads and parses every certificate in the system's store, which done per
//! session would cost each request milliseconds of a runtime thread.

use std::{
	fmt,
	sync::{Arc, OnceLock},
};

use rustls::pki_types::{pem::PemObject, CertificateDer};

use crate::McpError;

/// The roots an https endpoint's certificate must chain to: the system's, plus the operator's
/// (`--mcp-ca-file`: a private CA). Clones share one built configuration.
#[derive(Clone, Default)]
pub struct TrustedRoots {
	extra: Arc<[CertificateDer<'static>]>,
	built: Arc<OnceLock<Result<rustls::ClientConfig, String>>>,
}

impl TrustedRoots {
	/// The system's roots and the certificates of a PEM file (one or more), each checked as a
	/// trust anchor now so a broken file stops the worker at start rather than failing every
	/// https call.
	pub fn with_pem(pem: &[u8]) -> Result<Self, McpError> {
		let bad = |e: &dyn fmt::Display| McpError::BadCertificate(e.to_string());
		let ders = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(&format!("not PEM: {e}")))?;
		if ders.is_empty() {
			return Err(bad(&"no certificate in the file"));
		}
		let mut anchors = rustls::RootCertStore::empty();
		for der in &ders {
			anchors.add(der.clone()).map_err(|e| bad(&format!("not a usable CA certificate: {e}")))?;
		}
		Ok(Self { extra: ders.into(), built: Arc::default() })
	}

	/// The system's roots and the certificates of the PEM file at `path`.
	pub fn with_file(path: &std::path::Path) -> Result<Self, McpError> {
		let pem = std::fs::read(path).map_err(|e| McpError::BadCertificate(format!("reading {}: {e}", path.display())))?;
		Self::with_pem(&pem).map_err(|e| match e {
			McpError::BadCertificate(why) => McpError::BadCertificate(format!("{}: {why}", path.display())),
			other => other,
		})
	}

	/// Builds the client configuration now (it reads and parses the system's CA store, which
	/// takes milliseconds): call it once at start, off the async runtime's threads, so no
	/// request pays for it and a missing CA store is reported before the first call.
	pub fn prepare(&self) -> Result<(), McpError> {
		self.client_config().map(drop)
	}

	/// The client configuration, built on first use. rustls's cryptography is ring's, which the
	/// worker builds for its chain client already; it is named here, not installed process-wide.
	pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, McpError> {
		let built = self.built.get_or_init(|| {
			let provider = Arc::new(rustls::crypto::ring::default_provider());
			let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(self.extra.iter().cloned(), provider.clone())
				.map_err(|e| format!("no certificate authorities to check https endpoints against ({e}): install the system's CA certificates or give a CA file"))?;
			let config = rustls::ClientConfig::builder_with_provider(provider)
				.with_safe_default_protocol_versions()
				.map_err(|e| e.to_string())?
				.dangerous()
				.with_custom_certificate_verifier(Arc::new(verifier))
				.with_no_client_auth();
			Ok(config)
		});
		built.clone().map_err(McpError::Unreachable)
	}
}

impl fmt::Debug for TrustedRoots {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		write!(f, "TrustedRoots(the system's and {} more)", self.extra.len())
	}
}
