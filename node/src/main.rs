//! `openledger-node`: a validator or full node of an OpenLedger chain.

fn main() -> openledger_node_cli::Result<()> {
	// Set by build.rs: the package version and the commit.
	openledger_node_cli::run(env!("SUBSTRATE_CLI_IMPL_VERSION"))
}
