//! The runtime's constants keep the promises the pallets rely on across each other.

use openledger_runtime::configs::{MaxReceiptLifetime, UnbondingDelay, WithdrawalDelay};

/// A payer who asks for their credit back cannot take it before every receipt they authorised
/// can be settled: otherwise a worker could serve a request and find nothing left to pay it.
#[test]
fn credit_stays_drawable_for_a_receipts_lifetime() {
	assert!(WithdrawalDelay::get() >= MaxReceiptLifetime::get());
}

/// A worker who unbonds stays slashable until every receipt it signed has expired, so an
/// equivocation found late can still be punished.
#[test]
fn stake_stays_slashable_for_a_receipts_lifetime() {
	assert!(UnbondingDelay::get() >= MaxReceiptLifetime::get());
}
