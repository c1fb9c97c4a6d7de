//! Where an MCP endpoint may point. Endpoints come from the chain (anyone can register one), so
//! a worker that followed them anywhere could be made to probe its own network: loopback,
//! private, link-local and other special addresses are refused unless the operator allows them.
//! The address is resolved once and the connection pinned to it, so a name that resolves
//! elsewhere a moment later (DNS rebinding) does not move the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::McpError;

/// What kind of network an address is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
	/// The public internet.
	Public,
	/// This machine: 127.0.0.0/8, ::1.
	Loopback,
	/// A private network: 10/8, 172.16/12, 192.168/16, 100.64/10 (shared), fc00::/7.
	Private,
	/// The local link: 169.254/16, fe80::/10.
	LinkLocal,
	/// Unspecified, broadcast, multicast, documentation, benchmarking or reserved ranges: never
	/// a server's address.
	Special,
}

/// The kind of network `ip` is on (an IPv4-mapped IPv6 address as its IPv4 address).
pub fn classify(ip: IpAddr) -> Reach {
	match ip {
		IpAddr::V4(v4) => classify_v4(v4),
		IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
			Some(v4) => classify_v4(v4),
			None => classify_v6(v6),
		},
	}
}

fn classify_v4(ip: Ipv4Addr) -> Reach {
	let [a, b, c, _] = ip.octets();
	if ip.is_loopback() {
		Reach::Loopback
	} else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
		Reach::Private
	} else if ip.is_link_local() {
		Reach::LinkLocal
	} else if a == 0 ||
		a >= 224 || // multicast, reserved, broadcast
		(a == 192 && b == 0 && (c == 0 || c == 2)) || // IETF protocol assignments, TEST-NET-1
		(a == 198 && (b == 18 || b == 19)) || // benchmarking
		(a == 198 && b == 51 && c == 100) ||
		(a == 203 && b == 0 && c == 113)
	{
		Reach::Special
	} else {
		Reach::Public
	}
}

fn classify_v6(ip: Ipv6Addr) -> Reach {
	let segments = ip.segments();
	let first = segments[0];
	if first == 0x2002 {
		// 6to4 carries an IPv4 address, reached through a relay: judged as that address.
		let [a, b] = segments[1].to_be_bytes();
		let [c, d] = segments[2].to_be_bytes();
		return classify_v4(Ipv4Addr::new(a, b, c, d));
	}
	if ip.is_loopback() {
		Reach::Loopback
	} else if first & 0xfe00 == 0xfc00 {
		Reach::Private
	} else if first & 0xffc0 == 0xfe80 {
		Reach::LinkLocal
	} else if ip.is_unspecified() ||
		ip.is_multicast() ||
		(first == 0x2001 && (segments[1] < 0x0200 || segments[1] == 0x0db8)) || // IETF (Teredo), documentation
		first & 0xe000 != 0x2000
	{
		// Outside 2000::/3 (global unicast) nothing is a public server.
		Reach::Special
	} else {
		Reach::Public
	}
}

/// An endpoint checked and resolved: its URL and the one address requests go to.
#[derive(Clone, Debug)]
pub struct Endpoint {
	pub url: reqwest::Url,
	pub host: String,
	pub addr: SocketAddr,
}

/// Parses `endpoint` (an `http://` or `https://` URL) and resolves its host. Every address the name resolves
/// to must be public — or, when `allow_private` (the operator's `--mcp-allow-private`), at
/// least not special — so a name cannot hide a private address behind a public one; requests
/// then go to the first.
pub async fn resolve(endpoint: &str, allow_private: bool) -> Result<Endpoint, McpError> {
	let url = reqwest::Url::parse(endpoint).map_err(|e| McpError::BadEndpoint(format!("`{endpoint}` is not a URL: {e}")))?;
	if url.scheme() != "http" && url.scheme() != "https" {
		return Err(McpError::BadEndpoint(format!("`{endpoint}`: MCP endpoints are http:// or https:// URLs")));
	}
	if !url.username().is_empty() || url.password().is_some() {
		return Err(McpError::BadEndpoint(format!("`{endpoint}` carries credentials")));
	}
	let host = url.host_str().ok_or_else(|| McpError::BadEndpoint(format!("`{endpoint}` has no host")))?.to_owned();
	let port = url.port_or_known_default().ok_or_else(|| McpError::BadEndpoint(format!("`{endpoint}` has no port")))?;
	let bare = host.trim_start_matches('[').trim_end_matches(']');
	let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
		Ok(ip) => vec![SocketAddr::new(ip, port)],
		Err(_) => tokio::net::lookup_host((bare, port))
			.await
			.map_err(|e| McpError::Unreachable(format!("resolving {host}: {e}")))?
			.collect(),
	};
	let first = *addrs.first().ok_or_else(|| McpError::Unreachable(format!("{host} resolves to no address")))?;
	let refuse = |reach: Reach| reach == Reach::Special || (!allow_private && reach != Reach::Public);
	if let Some(refused) = addrs.iter().find(|a| refuse(classify(a.ip()))) {
		let hint = if allow_private { "never a server's address" } else { "private, loopback and link-local endpoints need --mcp-allow-private" };
		return Err(McpError::AddressRefused(format!("{host} resolves to {} ({:?}); {hint}", refused.ip(), classify(refused.ip()))));
	}
	Ok(Endpoint { url, host, addr: first })
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn addresses_are_classified() {
		let cases: &[(&str, Reach)] = &[
			("127.0.0.1", Reach::Loopback),
			("127.9.9.9", Reach::Loopback),
			("::1", Reach::Loopback),
			("::ffff:127.0.0.1", Reach::Loopback),
			("10.1.2.3", Reach::Private),
			("172.16.0.1", Reach::Private),
			("172.31.255.255", Reach::Private),
			("192.168.1.1", Reach::Private),
			("100.64.0.1", Reach::Private),
			("fd00::1", Reach::Private),
			("::ffff:10.0.0.1", Reach::Private),
			("169.254.169.254", Reach::LinkLocal),
			("fe80::1", Reach::LinkLocal),
			("0.0.0.0", Reach::Special),
			("255.255.255.255", Reach::Special),
			("224.0.0.1", Reach::Special),
			("192.0.2.1", Reach::Special),
			("198.18.0.1", Reach::Special),
			("::", Reach::Special),
			("ff02::1", Reach::Special),
			("2001:db8::1", Reach::Special),
			("8.8.8.8", Reach::Public),
			("172.32.0.1", Reach::Public),
			("100.128.0.1", Reach::Public),
			("2606:4700::1111", Reach::Public),
			("2002:a9fe:a9fe::1", Reach::LinkLocal),
			("2002:0a00:0001::", Reach::Private),
			("2002:0808:0808::", Reach::Public),
			("2001:0:4136:e378::1", Reach::Special),
		];
		for (ip, reach) in cases {
			assert_eq!(classify(ip.parse().unwrap()), *reach, "{ip}");
		}
	}

	/// Only literal addresses here: resolving them sends nothing anywhere.
	#[tokio::test]
	async fn loopback_and_private_endpoints_are_refused_unless_allowed() {
		for endpoint in ["http://127.0.0.1:9/mcp", "http://[::1]:9/mcp", "http://10.0.0.1/mcp", "http://169.254.169.254/"] {
			let refused = resolve(endpoint, false).await.unwrap_err();
			assert!(matches!(refused, McpError::AddressRefused(_)), "{endpoint}: {refused}");
		}
		let special = resolve("http://0.0.0.0:9/mcp", true).await.unwrap_err();
		assert!(matches!(special, McpError::AddressRefused(_)), "never a server, even when private ones are allowed: {special}");
		let allowed = resolve("http://127.0.0.1:9/mcp", true).await.unwrap();
		assert_eq!((allowed.host.as_str(), allowed.addr), ("127.0.0.1", "127.0.0.1:9".parse().unwrap()));
		let https = resolve("https://127.0.0.1/mcp", true).await.unwrap();
		assert_eq!(https.addr, "127.0.0.1:443".parse().unwrap(), "https's own port");
		for bad in ["ftp://127.0.0.1/", "ws://127.0.0.1/", "http://user:pw@127.0.0.1/", "not a url", "http://"] {
			assert!(matches!(resolve(bad, true).await, Err(McpError::BadEndpoint(_))), "{bad}");
		}
	}
}
