//! The receipts outbox: every signed receipt is committed here (fsynced) before its response
//! completes, and stays until the chain has judged it. A worker killed at any point restarts
//! with every delivered response's receipt still queued; resubmitting one that the chain already
//! settled is harmless (the runtime answers `AlreadySettled`, which counts as done).
//!
//! One redb file. Tables:
//! - `receipts`: receipt id → SCALE `SignedReceipt`, kept after settlement for audit and
//!   resubmission, until [`Outbox::prune_expired`] forgets it;
//! - `queue`: sequence number → receipt id, the receipts still to submit, oldest first;
//! - `outcomes`: receipt id → SCALE [`Outcome`];
//! - `requests`: request hash → receipt id, so one request never yields two receipts (kept as
//!   long as the receipt);
//! - `meta`: the chain (genesis hash) the outbox belongs to and the next sequence number.

use std::path::Path;

use codec::{Decode, Encode};
use openledger_primitives::ContentHash;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::SignedReceipt;

const RECEIPTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("receipts");
const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
const OUTCOMES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("outcomes");
const REQUESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Receipts forgotten per write transaction when pruning.
const PRUNE_BATCH: usize = 4096;

/// What the chain said about a receipt.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Outcome {
	/// Settled (by this worker's batch or, earlier, by anyone's) in the block with this number.
	Settled { block: u32 },
	/// Rejected for good; the reason as the runtime's event names it.
	Rejected { block: u32, reason: String },
	/// Set aside by the submitter: a call with this receipt alone failed on chain (why, as the
	/// node said), so it is submitted no more, and blocks no other receipt. `outbox resubmit`
	/// still sends it.
	SetAside { reason: String },
}

/// How many receipts are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
	pub queued: u64,
	pub settled: u64,
	pub rejected: u64,
	/// Receipts whose call failed on chain even alone (see [`Outcome::SetAside`]).
	pub set_aside: u64,
	pub total: u64,
}

/// A receipt waiting for submission.
#[derive(Clone, Debug)]
pub struct Queued {
	pub seq: u64,
	pub id: ContentHash,
	pub receipt: SignedReceipt,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
	#[error("outbox database: {0}")]
	Db(String),
	#[error("the outbox at {path} belongs to the chain with genesis {found}, not {expected}")]
	WrongChain { path: String, found: String, expected: String },
	#[error("a receipt for request {0} is already in the outbox")]
	DuplicateRequest(String),
	#[error("the outbox holds an undecodable record under {0}")]
	Corrupt(String),
}

impl<E: Into<redb::Error>> From<E> for OutboxError {
	fn from(e: E) -> Self {
		OutboxError::Db(e.into().to_string())
	}
}

pub struct Outbox {
	db: Database,
	pending: std::sync::Mutex<Pending>,
}

/// Receipts waiting for the next group commit, and whether a thread is committing.
#[derive(Default)]
struct Pending {
	jobs: Vec<(SignedReceipt, std::sync::mpsc::SyncSender<Result<ContentHash, OutboxError>>)>,
	leader: bool,
}

fn key(hash: &ContentHash) -> &[u8] {
	hash.as_bytes()
}

impl Outbox {
	/// Opens (or creates) the outbox at `path` for the chain with `genesis`.
	pub fn open(path: &Path, genesis: ContentHash) -> Result<Self, OutboxError> {
		if let Some(parent) = path.parent() {
			std::fs::create_dir_all(parent).map_err(|e| OutboxError::Db(format!("{}: {e}", parent.display())))?;
		}
		let db = Database::create(path)?;
		let tx = db.begin_write()?;
		{
			let mut meta = tx.open_table(META)?;
			let stored = meta.get("genesis")?.map(|v| v.value().to_vec());
			match stored {
				Some(bytes) if bytes != genesis.as_bytes() => {
					return Err(OutboxError::WrongChain {
						path: path.display().to_string(),
						found: format!("0x{}", hex::encode(bytes)),
						expected: super::keys::hex_hash(&genesis),
					})
				},
				Some(_) => {},
				None => {
					meta.insert("genesis", genesis.as_bytes())?;
				},
			}
			tx.open_table(RECEIPTS)?;
			tx.open_table(QUEUE)?;
			tx.open_table(OUTCOMES)?;
			tx.open_table(REQUESTS)?;
		}
		tx.commit()?;
		Ok(Self { db, pending: Default::default() })
	}

	/// Opens an existing outbox for inspection, whatever chain it belongs to.
	pub fn open_existing(path: &Path) -> Result<Self, OutboxError> {
		if !path.is_file() {
			return Err(OutboxError::Db(format!("no outbox at {}", path.display())));
		}
		let outbox = Self { db: Database::create(path)?, pending: Default::default() };
		outbox.genesis()?;
		Ok(outbox)
	}

	/// The genesis hash of the chain the outbox belongs to.
	pub fn genesis(&self) -> Result<ContentHash, OutboxError> {
		let tx = self.db.begin_read()?;
		let meta = tx.open_table(META)?;
		let bytes = meta.get("genesis")?.ok_or_else(|| OutboxError::Corrupt("meta.genesis".into()))?;
		if bytes.value().len() != 32 {
			return Err(OutboxError::Corrupt("meta.genesis".into()));
		}
		Ok(ContentHash::from_slice(bytes.value()))
	}

	/// Commits `receipt` durably and queues it for submission; returns its id. Refuses a second
	/// receipt for the same request.
	///
	/// Group commit: receipts that arrive while a commit is running are committed together by
	/// the next one, so concurrent requests share an fsync instead of queueing for one each.
	pub fn append(&self, receipt: &SignedReceipt) -> Result<ContentHash, OutboxError> {
		let (reply, answer) = std::sync::mpsc::sync_channel(1);
		let lead = {
			let mut pending = self.pending.lock().expect("outbox queue lock");
			pending.jobs.push((receipt.clone(), reply));
			!std::mem::replace(&mut pending.leader, true)
		};
		if lead {
			loop {
				let jobs = {
					let mut pending = self.pending.lock().expect("outbox queue lock");
					if pending.jobs.is_empty() {
						pending.leader = false;
						break;
					}
					std::mem::take(&mut pending.jobs)
				};
				let receipts: Vec<&SignedReceipt> = jobs.iter().map(|(r, _)| r).collect();
				let results = match self.commit(&receipts) {
					Ok(results) => results,
					Err(e) => receipts.iter().map(|_| Err(OutboxError::Db(e.to_string()))).collect(),
				};
				for ((_, reply), result) in jobs.into_iter().zip(results) {
					let _ = reply.send(result);
				}
			}
		}
		answer.recv().expect("the committing thread answers every receipt")
	}

	/// One write transaction for `receipts`; each gets its id or why it was refused.
	fn commit(&self, receipts: &[&SignedReceipt]) -> Result<Vec<Result<ContentHash, OutboxError>>, OutboxError> {
		let tx = self.db.begin_write()?;
		let mut results = Vec::with_capacity(receipts.len());
		{
			let mut requests = tx.open_table(REQUESTS)?;
			let mut table = tx.open_table(RECEIPTS)?;
			let mut queue = tx.open_table(QUEUE)?;
			let mut meta = tx.open_table(META)?;
			let mut seq = meta.get("next_seq")?.map(|v| decode_u64(v.value())).unwrap_or(0);
			for receipt in receipts {
				let (id, request) = (receipt.receipt.id(), receipt.receipt.request_hash);
				if requests.get(key(&request))?.is_some() {
					results.push(Err(OutboxError::DuplicateRequest(super::keys::hex_hash(&request))));
					continue;
				}
				requests.insert(key(&request), key(&id))?;
				table.insert(key(&id), receipt.encode().as_slice())?;
				queue.insert(seq, key(&id))?;
				seq = seq.wrapping_add(1);
				results.push(Ok(id));
			}
			meta.insert("next_seq", seq.to_le_bytes().as_slice())?;
		}
		tx.commit()?;
		Ok(results)
	}

	/// Whether a receipt for `request_hash` exists (a voucher's request was served already).
	pub fn has_request(&self, request_hash: &ContentHash) -> Result<bool, OutboxError> {
		let tx = self.db.begin_read()?;
		Ok(tx.open_table(REQUESTS)?.get(key(request_hash))?.is_some())
	}

	/// Up to `max` queued receipts, oldest first.
	pub fn queued(&self, max: usize) -> Result<Vec<Queued>, OutboxError> {
		let tx = self.db.begin_read()?;
		let (queue, receipts) = (tx.open_table(QUEUE)?, tx.open_table(RECEIPTS)?);
		let mut out = Vec::new();
		for entry in queue.iter()?.take(max) {
			let (seq, id) = entry?;
			let id = ContentHash::from_slice(id.value());
			let bytes = receipts.get(key(&id))?.ok_or_else(|| OutboxError::Corrupt(super::keys::hex_hash(&id)))?;
			let receipt = SignedReceipt::decode(&mut bytes.value())
				.map_err(|_| OutboxError::Corrupt(super::keys::hex_hash(&id)))?;
			out.push(Queued { seq: seq.value(), id, receipt });
		}
		Ok(out)
	}

	/// Records the chain's verdicts and takes those receipts off the queue, in one commit.
	pub fn record(&self, outcomes: &[(u64, ContentHash, Outcome)]) -> Result<(), OutboxError> {
		let tx = self.db.begin_write()?;
		{
			let (mut queue, mut table) = (tx.open_table(QUEUE)?, tx.open_table(OUTCOMES)?);
			for (seq, id, outcome) in outcomes {
				queue.remove(*seq)?;
				table.insert(key(id), outcome.encode().as_slice())?;
			}
		}
		tx.commit()?;
		Ok(())
	}

	pub fn outcome(&self, id: &ContentHash) -> Result<Option<Outcome>, OutboxError> {
		let tx = self.db.begin_read()?;
		let table = tx.open_table(OUTCOMES)?;
		let Some(bytes) = table.get(key(id))? else { return Ok(None) };
		Outcome::decode(&mut bytes.value()).map(Some).map_err(|_| OutboxError::Corrupt(super::keys::hex_hash(id)))
	}

	/// Every receipt ever committed, in id order.
	pub fn receipts(&self) -> Result<Vec<SignedReceipt>, OutboxError> {
		let tx = self.db.begin_read()?;
		let table = tx.open_table(RECEIPTS)?;
		let mut out = Vec::new();
		for entry in table.iter()? {
			let (id, bytes) = entry?;
			let receipt = SignedReceipt::decode(&mut bytes.value())
				.map_err(|_| OutboxError::Corrupt(format!("0x{}", hex::encode(id.value()))))?;
			out.push(receipt);
		}
		Ok(out)
	}

	/// Queues every receipt again, settled ones included (the chain refuses to pay twice, so
	/// this only recovers receipts whose outcome was lost). Returns how many were queued.
	pub fn requeue_all(&self) -> Result<u64, OutboxError> {
		let tx = self.db.begin_write()?;
		let count;
		{
			let ids: Vec<Vec<u8>> = {
				let receipts = tx.open_table(RECEIPTS)?;
				let mut ids = Vec::new();
				for entry in receipts.iter()? {
					ids.push(entry?.0.value().to_vec());
				}
				ids
			};
			let mut queue = tx.open_table(QUEUE)?;
			queue.retain(|_, _| false)?;
			tx.open_table(OUTCOMES)?.retain(|_, _| false)?;
			for (seq, id) in ids.iter().enumerate() {
				queue.insert(seq as u64, id.as_slice())?;
			}
			count = ids.len() as u64;
			tx.open_table(META)?.insert("next_seq", count.to_le_bytes().as_slice())?;
		}
		tx.commit()?;
		Ok(count)
	}

	/// Forgets the judged receipts that expired before block `before`, with their outcomes: the
	/// chain takes an expired receipt no more. Queued receipts stay, whatever their expiry, until
	/// the chain has judged them. Their request records go too. A voucher's request hash is the
	/// body's alone, so once its record is gone the same body with a new voucher gets a second
	/// receipt for the request: the caller passes a `before` at least the chain's evidence
	/// window in the past, after which the two no longer prove equivocation. Returns how many
	/// receipts went.
	pub fn prune_expired(&self, before: u32) -> Result<u64, OutboxError> {
		// Found in a read transaction, so the scan holds up no append; removed in small writes.
		let expired: Vec<(Vec<u8>, ContentHash)> = {
			let tx = self.db.begin_read()?;
			let (outcomes, receipts) = (tx.open_table(OUTCOMES)?, tx.open_table(RECEIPTS)?);
			let mut expired = Vec::new();
			for entry in outcomes.iter()? {
				let id = entry?.0.value().to_vec();
				let Some(bytes) = receipts.get(id.as_slice())? else { continue };
				let signed = SignedReceipt::decode(&mut bytes.value())
					.map_err(|_| OutboxError::Corrupt(format!("0x{}", hex::encode(&id))))?;
				if signed.receipt.expires_at < before {
					expired.push((id, signed.receipt.request_hash));
				}
			}
			expired
		};
		for batch in expired.chunks(PRUNE_BATCH) {
			let tx = self.db.begin_write()?;
			{
				let (mut outcomes, mut receipts, mut requests) =
					(tx.open_table(OUTCOMES)?, tx.open_table(RECEIPTS)?, tx.open_table(REQUESTS)?);
				for (id, request) in batch {
					outcomes.remove(id.as_slice())?;
					receipts.remove(id.as_slice())?;
					requests.remove(key(request))?;
				}
			}
			tx.commit()?;
		}
		Ok(expired.len() as u64)
	}

	pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
		let tx = self.db.begin_read()?;
		let mut stats = OutboxStats {
			queued: tx.open_table(QUEUE)?.len()?,
			total: tx.open_table(RECEIPTS)?.len()?,
			..OutboxStats::default()
		};
		for entry in tx.open_table(OUTCOMES)?.iter()? {
			match Outcome::decode(&mut entry?.1.value()) {
				Ok(Outcome::Settled { .. }) => stats.settled += 1,
				Ok(Outcome::Rejected { .. }) => stats.rejected += 1,
				Ok(Outcome::SetAside { .. }) => stats.set_aside += 1,
				Err(_) => return Err(OutboxError::Corrupt("an outcome".into())),
			}
		}
		Ok(stats)
	}
}

fn decode_u64(bytes: &[u8]) -> u64 {
	bytes.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::test_receipt;

	#[test]
	fn receipts_survive_reopening_and_leave_the_queue_once_judged() {
		let dir = tempfile::tempdir().unwrap();
		let path = dir.path().join("outbox.redb");
		let genesis = ContentHash::repeat_byte(1);
		let (a, b) = (test_receipt(1), test_receipt(2));
		let (id_a, id_b);
		{
			let outbox = Outbox::open(&path, genesis).unwrap();
			id_a = outbox.append(&a).unwrap();
			id_b = outbox.append(&b).unwrap();
		}
		let outbox = Outbox::open(&path, genesis).unwrap();
		let queued = outbox.queued(10).unwrap();
		assert_eq!(queued.iter().map(|q| q.id).collect::<Vec<_>>(), vec![id_a, id_b]);
		assert_eq!(queued[0].receipt, a);
		outbox.record(&[(queued[0].seq, id_a, Outcome::Settled { block: 7 })]).unwrap();
		assert_eq!(outbox.queued(10).unwrap().len(), 1);
		assert_eq!(outbox.outcome(&id_a).unwrap(), Some(Outcome::Settled { block: 7 }));
		assert_eq!(outbox.stats().unwrap(), OutboxStats { queued: 1, settled: 1, rejected: 0, set_aside: 0, total: 2 });
		// A receipt set aside leaves the queue too, and is counted as such.
		let set_aside = Outcome::SetAside { reason: "Balances.Underflow".into() };
		outbox.record(&[(queued[1].seq, id_b, set_aside.clone())]).unwrap();
		assert_eq!(outbox.outcome(&id_b).unwrap(), Some(set_aside));
		assert_eq!(outbox.stats().unwrap(), OutboxStats { queued: 0, settled: 1, rejected: 0, set_aside: 1, total: 2 });
		assert_eq!(outbox.requeue_all().unwrap(), 2);
		assert_eq!(outbox.stats().unwrap(), OutboxStats { queued: 2, settled: 0, rejected: 0, set_aside: 0, total: 2 });
		// The sequence continues after a requeue.
		let c = test_receipt(3);
		outbox.append(&c).unwrap();
		assert_eq!(outbox.queued(10).unwrap().last().unwrap().receipt, c);
	}

	/// Judged receipts that expired before the cut go, with their request records; queued ones
	/// stay whatever their expiry, and judged ones not yet expired stay.
	#[test]
	fn pruning_forgets_judged_receipts_that_expired() {
		let dir = tempfile::tempdir().unwrap();
		let outbox = Outbox::open(&dir.path().join("o.redb"), ContentHash::zero()).unwrap();
		let expiring = |n, expires_at| {
			let mut r = test_receipt(n);
			r.receipt.expires_at = expires_at;
			r
		};
		let (settled, rejected, queued, recent) = (expiring(1, 50), expiring(2, 60), expiring(3, 50), expiring(4, 500));
		for r in [&settled, &rejected, &queued, &recent] {
			outbox.append(r).unwrap();
		}
		let verdicts: Vec<_> = outbox
			.queued(10)
			.unwrap()
			.into_iter()
			.filter(|q| q.receipt != queued)
			.map(|q| {
				let outcome = if q.receipt == rejected {
					Outcome::Rejected { block: 40, reason: "Expired".into() }
				} else {
					Outcome::Settled { block: 40 }
				};
				(q.seq, q.id, outcome)
			})
			.collect();
		outbox.record(&verdicts).unwrap();
		assert_eq!(outbox.prune_expired(100).unwrap(), 2);
		assert_eq!(outbox.stats().unwrap(), OutboxStats { queued: 1, settled: 1, rejected: 0, set_aside: 0, total: 2 });
		assert!(!outbox.has_request(&settled.receipt.request_hash).unwrap());
		assert!(!outbox.has_request(&rejected.receipt.request_hash).unwrap());
		assert!(outbox.has_request(&queued.receipt.request_hash).unwrap());
		assert!(outbox.has_request(&recent.receipt.request_hash).unwrap());
		assert_eq!(outbox.queued(10).unwrap()[0].receipt, queued);
		assert_eq!(outbox.prune_expired(100).unwrap(), 0);

		// A voucher's request record stays while its receipt does, so the same body with a new
		// voucher is refused; it goes with the receipt (the caller's cut is past the evidence
		// window then).
		let mut vouched = expiring(5, 70);
		let payer = crate::keys::Sr25519Key::from_suri("//Alice").unwrap();
		let worker = vouched.receipt.worker.clone();
		vouched.voucher = Some(crate::sign_voucher(&payer, worker, b"body", 1, 70, &ContentHash::zero()));
		outbox.append(&vouched).unwrap();
		let q = outbox.queued(10).unwrap().into_iter().find(|q| q.receipt == vouched).unwrap();
		outbox.record(&[(q.seq, q.id, Outcome::Settled { block: 41 })]).unwrap();
		assert_eq!(outbox.prune_expired(70).unwrap(), 0);
		let mut again = expiring(5, 900);
		again.receipt.completion_tokens += 1;
		assert!(matches!(outbox.append(&again), Err(OutboxError::DuplicateRequest(_))));
		assert_eq!(outbox.prune_expired(100).unwrap(), 1);
		assert!(!outbox.has_request(&vouched.receipt.request_hash).unwrap());
	}

	#[test]
	fn one_request_gets_one_receipt() {
		let dir = tempfile::tempdir().unwrap();
		let outbox = Outbox::open(&dir.path().join("o.redb"), ContentHash::zero()).unwrap();
		let r = test_receipt(5);
		outbox.append(&r).unwrap();
		assert!(outbox.has_request(&r.receipt.request_hash).unwrap());
		let mut again = r.clone();
		again.receipt.completion_tokens += 1;
		assert!(matches!(outbox.append(&again), Err(OutboxError::DuplicateRequest(_))));
		assert_eq!(outbox.stats().unwrap().total, 1);
	}

	#[test]
	fn concurrent_appends_are_all_committed_once() {
		let dir = tempfile::tempdir().unwrap();
		let outbox = std::sync::Arc::new(Outbox::open(&dir.path().join("o.redb"), ContentHash::zero()).unwrap());
		let threads: Vec<_> = (0..8u8)
			.map(|t| {
				let outbox = outbox.clone();
				std::thread::spawn(move || {
					(0..10u8).map(|n| outbox.append(&test_receipt(t * 10 + n)).unwrap()).collect::<Vec<_>>()
				})
			})
			.collect();
		let mut ids: Vec<ContentHash> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
		ids.sort();
		ids.dedup();
		assert_eq!(ids.len(), 80);
		let queued = outbox.queued(100).unwrap();
		assert_eq!(queued.len(), 80);
		let mut seqs: Vec<u64> = queued.iter().map(|q| q.seq).collect();
		seqs.dedup();
		assert_eq!(seqs, (0..80).collect::<Vec<_>>(), "every receipt has its own place in the queue");
		// A duplicate in the same group is refused without failing the others.
		let dup = test_receipt(200);
		let (a, b) = (outbox.clone(), outbox.clone());
		let (d1, d2) = (dup.clone(), dup.clone());
		let t1 = std::thread::spawn(move || a.append(&d1).is_ok());
		let t2 = std::thread::spawn(move || b.append(&d2).is_ok());
		assert_eq!(u8::from(t1.join().unwrap()) + u8::from(t2.join().unwrap()), 1);
	}

	#[test]
	fn an_outbox_refuses_another_chain() {
		let dir = tempfile::tempdir().unwrap();
		let path = dir.path().join("o.redb");
		drop(Outbox::open(&path, ContentHash::repeat_byte(1)).unwrap());
		assert!(matches!(Outbox::open(&path, ContentHash::repeat_byte(2)), Err(OutboxError::WrongChain { .. })));
	}
}
