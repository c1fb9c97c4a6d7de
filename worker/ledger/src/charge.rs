//! The charge of one request: priced against the chain's rates once its adapter, template and
//! prompt are known, its most possible fee held from the payer's budget (so the receipt can never
//! exceed what the payer authorised), and issued as a signed receipt into the outbox before the
//! answer is complete.

use std::{
	collections::{HashMap, HashSet},
	sync::Arc,
};

use openledger_primitives::{
	fees::FeeLimit, AdapterId, AttributionEntry, BaseModelId, ContentHash, DataNetId, PromptId, ToolId, ToolUse,
	MAX_ATTRIBUTION_ENTRIES,
};
use openledger_tasks::blocking;
use polkadot_sdk::sp_runtime::AccountId32;

use super::{
	authorise::Authorisation,
	chain::{AdapterInfo, ChainSnapshot, ToolInfo},
	keys::hex_hash,
	outbox::OutboxError,
	service::{Ledger, LedgerError},
	sign_receipt, Balance, Served,
};

/// The registrations an operator has vetted. With ids given, the worker bills only those: a
/// file whose hash names another registration (one a squatter made first, or one made after the
/// vetted one was retired) is refused with a 404 instead of paying whoever registered it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins {
	/// `None`: every adapter registered for the base model.
	pub adapters: Option<HashSet<AdapterId>>,
	/// `None`: every registered prompt template.
	pub prompts: Option<HashSet<PromptId>>,
}

/// The MCP tools a request may call, as its charge prices them: each tool's price per call and
/// the most calls the request makes in all. The charge holds what the dearest tool would cost at
/// every call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolBudget {
	pub prices: Vec<(ToolId, Balance)>,
	pub max_calls: u32,
}

impl ToolBudget {
	/// The most the calls can cost.
	pub fn max_cost(&self) -> Balance {
		let dearest = self.prices.iter().map(|(_, price)| *price).max().unwrap_or(0);
		dearest.saturating_mul(Balance::from(self.max_calls))
	}

	/// Whether `used` names only these tools, each once, within the calls allowed.
	fn covers(&self, used: &[ToolUse]) -> bool {
		let calls: u64 = used.iter().map(|u| u64::from(u.calls)).sum();
		let known = used.iter().all(|u| self.prices.iter().any(|(id, _)| *id == u.tool));
		let distinct = used.iter().enumerate().all(|(i, u)| used[..i].iter().all(|v| v.tool != u.tool));
		known && distinct && calls <= u64::from(self.max_calls)
	}
}

/// A request priced against on-chain rates.
#[derive(Clone, Debug)]
struct Priced {
	adapter: Option<(u32, ContentHash)>,
	prompt: Option<(u32, ContentHash)>,
	/// The adapter's training provenance on chain.
	provenance: Vec<(DataNetId, u32)>,
	/// The most tokens (prompt + completion) the budget pays for (`u64::MAX` when tokens are
	/// free).
	max_total_tokens: u64,
	limit: FeeLimit<Balance>,
	tools: ToolBudget,
}

/// A charged request: who pays, at what prices, and the budget held for it. Dropped without
/// being issued (the request failed, or its client left), it releases the budget at once.
pub struct Charge {
	ledger: Arc<Ledger>,
	auth: Authorisation,
	priced: Priced,
	max_tokens: usize,
	reservation: Reservation,
}

impl Charge {
	/// The request hash the receipt will carry.
	pub fn request_hash(&self) -> ContentHash {
		self.auth.request_hash
	}

	/// The most completion tokens the payer's budget pays for, at most what was asked.
	pub fn max_tokens(&self) -> usize {
		self.max_tokens
	}

	/// The tools' prices: what the tool entries of the receipt will cost.
	pub fn tools(&self) -> &ToolBudget {
		&self.priced.tools
	}

	/// The adapter's training DataNets and their shares, as the chain records them.
	pub fn provenance(&self) -> &[(DataNetId, u32)] {
		&self.priced.provenance
	}

	/// Signs the receipt of the served request and commits it to the outbox (fsynced) before
	/// the response completes; the receipt id. Runs on the blocking pool.
	pub async fn issue(
		mut self,
		output_hash: ContentHash,
		prompt_tokens: usize,
		completion_tokens: usize,
		attribution: Vec<AttributionEntry>,
		tools: Vec<ToolUse>,
	) -> Result<ContentHash, LedgerError> {
		let ledger = self.ledger.clone();
		// Held for at most these calls: more would take the fee past what was reserved.
		if !self.priced.tools.covers(&tools) {
			return Err(LedgerError::PaymentRequired(format!("the tool calls {tools:?} are more than the request's charge covers")));
		}
		// A receipt past its expiry would be rejected: the authorisation lapsed while the answer
		// was generated (the chain fell behind, or the request ran long).
		let best = ledger.view.best_block();
		if self.auth.expires_at <= best {
			return Err(LedgerError::PaymentRequired(format!(
				"the authorisation expired at block {} while the answer was generated (best block {best})",
				self.auth.expires_at
			)));
		}
		let served = Served {
			payer: self.auth.payer,
			request_hash: self.auth.request_hash,
			output_hash,
			base_model: ledger.base_model,
			adapter: self.priced.adapter,
			prompt: self.priced.prompt,
			prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
			completion_tokens: u32::try_from(completion_tokens).unwrap_or(u32::MAX),
			attribution,
			tools,
			expires_at: self.auth.expires_at,
			voucher: self.auth.voucher,
		};
		let signer = ledger.clone();
		let appended = blocking(move || {
			let signed = sign_receipt(&signer.account, &signer.session, &signer.genesis, served);
			signer.outbox.append(&signed)
		})
		.await;
		let id = match appended {
			// The same voucher sent twice at once: both passed the check, one got the receipt.
			Err(OutboxError::DuplicateRequest(request)) => {
				return Err(LedgerError::AlreadyServed(format!("request {request} was served already; a voucher pays for one request")))
			},
			other => other?,
		};
		self.reservation.receipt = Some(id);
		drop(self.reservation);
		ledger.wakeup.notify_one();
		Ok(id)
	}
}

impl Ledger {
	/// Prices a request by the hashes of the adapter and template files it uses and the MCP tools
	/// it may call, caps its `max_tokens` to what the payer's budget pays for, and holds its most
	/// possible fee from that budget: 404 for an adapter or template not registered on chain, 402
	/// when the budget does not cover the prompt.
	#[allow(clippy::too_many_arguments)]
	pub fn charge(
		self: &Arc<Self>,
		auth: Authorisation,
		adapter: Option<ContentHash>,
		template: Option<ContentHash>,
		grounded: bool,
		tools: ToolBudget,
		prompt_tokens: usize,
		max_tokens: usize,
	) -> Result<Charge, LedgerError> {
		let available = auth.per_request.min(auth.shared.saturating_sub(self.committed(&auth.payer)));
		let asked = PricedAsk { adapter, template, grounded, tools, prompt_tokens };
		let priced = price_request(&self.view.snapshot(), self.base_model, &self.pins, available, asked)?;
		let affordable = usize::try_from(priced.max_total_tokens).unwrap_or(usize::MAX).saturating_sub(prompt_tokens);
		let max_tokens = max_tokens.min(affordable);
		let total = u64::try_from(prompt_tokens.saturating_add(max_tokens)).unwrap_or(u64::MAX);
		let reservation = self.reserve(&auth, priced.limit.max_fee(total))?;
		Ok(Charge { ledger: self.clone(), auth, priced, max_tokens, reservation })
	}

	/// The MCP tool registered under `id`, as the chain was last read.
	pub fn tool(&self, id: ToolId) -> Option<ToolInfo> {
		self.view.snapshot().tools.get(&id).cloned()
	}

	/// The training provenance the chain records for the adapter whose weights have this hash:
	/// what a request through it searches and pays. 404 when it is not registered for this
	/// worker's base model, before any work is done for the request.
	pub fn adapter_provenance(&self, adapter: &ContentHash) -> Result<Vec<(DataNetId, u32)>, LedgerError> {
		let snapshot = self.view.snapshot();
		registered_adapter(&snapshot, self.base_model, &self.pins, adapter).map(|a| a.provenance.clone())
	}

	/// Holds `amount` of the payer's budget for a priced request (see [`Commitments`]), or 402
	/// when requests priced meanwhile took what it needs.
	fn reserve(self: &Arc<Self>, auth: &Authorisation, amount: Balance) -> Result<Reservation, LedgerError> {
		let mut commitments = self.commitments.lock().expect("commitments lock");
		let committed = commitments.by_payer.get(&auth.payer).copied().unwrap_or(0);
		if amount > auth.per_request || committed.saturating_add(amount) > auth.shared {
			return Err(LedgerError::PaymentRequired(format!(
				"payer {}'s requests not yet settled leave less than this one may cost ({amount})",
				auth.payer
			)));
		}
		commitments.add(&auth.payer, amount);
		tracing::debug!(payer = %auth.payer, amount, committed = committed + amount, shared = auth.shared, "budget reserved");
		Ok(Reservation { ledger: self.clone(), payer: auth.payer.clone(), amount, receipt: None })
	}

	/// Receipts the chain has judged: what was held for them is free again (the chain has
	/// charged the fee, or refused it).
	pub fn release(&self, receipts: &[ContentHash]) {
		let mut commitments = self.commitments.lock().expect("commitments lock");
		for id in receipts {
			if let Some((payer, amount)) = commitments.by_receipt.remove(id) {
				commitments.remove(&payer, amount);
			}
		}
	}

	/// What the payer's unsettled requests at this worker may still cost.
	pub(crate) fn committed(&self, payer: &AccountId32) -> Balance {
		self.commitments.lock().expect("commitments lock").by_payer.get(payer).copied().unwrap_or(0)
	}
}

/// What this worker's requests may still cost each payer before the chain has settled them. The
/// chain lowers credit and allowances only when a receipt settles, so a new request may only be
/// authorised for what the payer's requests in flight and awaiting settlement leave.
#[derive(Default)]
pub(crate) struct Commitments {
	by_payer: HashMap<AccountId32, Balance>,
	/// Issued receipts awaiting a verdict: receipt id → (payer, amount held for it).
	by_receipt: HashMap<ContentHash, (AccountId32, Balance)>,
}

impl Commitments {
	fn add(&mut self, payer: &AccountId32, amount: Balance) {
		let held = self.by_payer.entry(payer.clone()).or_default();
		*held = held.saturating_add(amount);
	}

	fn remove(&mut self, payer: &AccountId32, amount: Balance) {
		if let Some(held) = self.by_payer.get_mut(payer) {
			*held = held.saturating_sub(amount);
			if *held == 0 {
				self.by_payer.remove(payer);
			}
		}
	}
}

/// An amount held from a payer's budget for one request, from pricing until its receipt is
/// judged on chain; released at once if the request fails before a receipt exists.
struct Reservation {
	ledger: Arc<Ledger>,
	payer: AccountId32,
	amount: Balance,
	receipt: Option<ContentHash>,
}

impl Drop for Reservation {
	fn drop(&mut self) {
		let mut commitments = self.ledger.commitments.lock().expect("commitments lock");
		match self.receipt {
			// Held until the submitter records the receipt's verdict (a worker that does not
			// submit never learns it, and holds nothing past the answer).
			Some(id) if self.ledger.submits => {
				commitments.by_receipt.insert(id, (self.payer.clone(), self.amount));
			},
			_ => commitments.remove(&self.payer, self.amount),
		}
	}
}

/// The adapter registered on chain for `base_model` with these weights; 404 (the `model` field's
/// fault) when there is none, or when it is not one of the pinned ids.
fn registered_adapter<'a>(
	snapshot: &'a ChainSnapshot,
	base_model: BaseModelId,
	pins: &Pins,
	hash: &ContentHash,
) -> Result<&'a AdapterInfo, LedgerError> {
	let adapter = snapshot.adapters.get(hash).filter(|a| a.base_model == base_model).ok_or_else(|| {
		LedgerError::NotRegistered("model", format!("adapter {} is not registered on chain for base model {base_model}", hex_hash(hash)))
	})?;
	match &pins.adapters {
		Some(ids) if !ids.contains(&adapter.id) => Err(LedgerError::NotRegistered(
			"model",
			format!(
				"adapter {} is registered on chain as adapter {}, which is not among the ids this worker serves (--adapter-ids)",
				hex_hash(hash),
				adapter.id
			),
		)),
		_ => Ok(adapter),
	}
}

/// What a request uses, to be priced.
struct PricedAsk {
	adapter: Option<ContentHash>,
	template: Option<ContentHash>,
	grounded: bool,
	tools: ToolBudget,
	prompt_tokens: usize,
}

/// Prices a request against `snapshot`: the adapter and prompt must be registered (by the hashes
/// of the files the worker serves), and `budget` must cover the fixed parts and the prompt. The retrieval part is
/// counted for the most items a receipt may name, so span matches found after generation can
/// never push the fee past the budget; the tools' part for every call at the dearest tool.
fn price_request(
	snapshot: &ChainSnapshot,
	base_model: BaseModelId,
	pins: &Pins,
	budget: Balance,
	asked: PricedAsk,
) -> Result<Priced, LedgerError> {
	let PricedAsk { adapter: adapter_hash, template: template_hash, grounded, tools, prompt_tokens } = asked;
	let worker_rate = snapshot.worker.as_ref().map_or(0, |w| w.compute_price_per_1k_tokens);
	let adapter = adapter_hash.map(|hash| registered_adapter(snapshot, base_model, pins, &hash)).transpose()?;
	let prompt = match template_hash {
		Some(hash) => {
			let prompt = snapshot.prompts.get(&hash).ok_or_else(|| {
				LedgerError::NotRegistered("prompt_template", format!("prompt template {} is not registered on chain", hex_hash(&hash)))
			})?;
			if pins.prompts.as_ref().is_some_and(|ids| !ids.contains(&prompt.id)) {
				return Err(LedgerError::NotRegistered(
					"prompt_template",
					format!(
						"prompt template {} is registered on chain as prompt {}, which is not among the ids this worker serves (--prompt-ids)",
						hex_hash(&hash),
						prompt.id
					),
				));
			}
			Some(prompt)
		},
		None => None,
	};
	let limit = FeeLimit::new(
		worker_rate,
		adapter.map_or(0, |a| a.price_per_1k_tokens),
		prompt.map_or(0, |p| p.price_per_call),
		snapshot.retrieval_price,
		if grounded { MAX_ATTRIBUTION_ENTRIES } else { 0 },
	)
	.with_tool_cost(tools.max_cost());
	let Some(max_total_tokens) = limit.max_tokens(budget) else {
		return Err(LedgerError::PaymentRequired(format!(
			"the authorised {budget} does not cover this request's fixed price {}",
			limit.fixed
		)));
	};
	if max_total_tokens <= prompt_tokens as u64 {
		return Err(LedgerError::PaymentRequired(format!(
			"the authorised {budget} pays for {max_total_tokens} tokens; the prompt alone has {prompt_tokens}"
		)));
	}
	Ok(Priced {
		adapter: adapter.map(|a| (a.id, adapter_hash.unwrap_or_default())),
		prompt: prompt.map(|p| (p.id, template_hash.unwrap_or_default())),
		provenance: adapter.map(|a| a.provenance.clone()).unwrap_or_default(),
		max_total_tokens,
		limit,
		tools,
	})
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::chain::{AdapterInfo, PromptInfo, WorkerInfo};
	use openledger_primitives::{
		fees::{split_fee, FeeInputs, TrainingSource, WeightedItem},
		PPM,
	};
	use polkadot_sdk::sp_runtime::Permill;
	use proptest::prelude::*;

	fn ask(adapter: Option<ContentHash>, template: Option<ContentHash>, grounded: bool, prompt_tokens: usize) -> PricedAsk {
		PricedAsk { adapter, template, grounded, tools: ToolBudget::default(), prompt_tokens }
	}

	fn snapshot(worker_rate: Balance, adapter_rate: Balance, prompt_price: Balance, retrieval: Balance) -> ChainSnapshot {
		let mut s = ChainSnapshot { retrieval_price: retrieval, max_receipt_lifetime: 100, ..ChainSnapshot::default() };
		s.worker = Some(WorkerInfo {
			session_key: Default::default(),
			compute_price_per_1k_tokens: worker_rate,
			serves: vec![0],
			stake: 1,
			active: true,
		});
		s.adapters.insert(
			ContentHash::repeat_byte(1),
			AdapterInfo {
				id: 4,
				owner: AccountId32::new([2; 32]),
				base_model: 0,
				price_per_1k_tokens: adapter_rate,
				provenance: vec![(0, 600_000)],
			},
		);
		s.prompts.insert(
			ContentHash::repeat_byte(2),
			PromptInfo { id: 9, owner: AccountId32::new([3; 32]), price_per_call: prompt_price },
		);
		s
	}

	#[test]
	fn unregistered_adapters_and_prompts_are_not_served() {
		let s = snapshot(10, 10, 10, 1);
		let unknown = Some(ContentHash::repeat_byte(7));
		assert!(matches!(price_request(&s, 0, &Pins::default(), 1_000_000, ask(unknown, None, false, 5)), Err(LedgerError::NotRegistered("model", _))));
		assert!(matches!(
			price_request(&s, 0, &Pins::default(), 1_000_000, ask(None, unknown, false, 5)),
			Err(LedgerError::NotRegistered("prompt_template", _))
		));
		// Registered, but for another base model.
		assert!(matches!(
			price_request(&s, 1, &Pins::default(), 1_000_000, ask(Some(ContentHash::repeat_byte(1)), None, false, 5)),
			Err(LedgerError::NotRegistered("model", _))
		));
		let priced = price_request(&s, 0, &Pins::default(), 1_000_000, ask(Some(ContentHash::repeat_byte(1)), Some(ContentHash::repeat_byte(2)), false, 5)).unwrap();
		assert_eq!(priced.adapter, Some((4, ContentHash::repeat_byte(1))));
		assert_eq!(priced.prompt, Some((9, ContentHash::repeat_byte(2))));
		assert_eq!(priced.provenance, vec![(0, 600_000)]);
	}

	#[test]
	fn pinned_ids_are_the_only_ones_billed() {
		let s = snapshot(10, 10, 10, 1);
		let (adapter, template) = (Some(ContentHash::repeat_byte(1)), Some(ContentHash::repeat_byte(2)));
		// The snapshot has adapter 4 and prompt 9 for these hashes.
		let others = Pins { adapters: Some(HashSet::from([3])), prompts: Some(HashSet::from([8])) };
		let refused = |asked| match price_request(&s, 0, &others, 1_000_000, asked) {
			Err(LedgerError::NotRegistered(field, message)) => (field, message),
			other => panic!("not refused: {:?}", other.map(|p| p.adapter)),
		};
		let (field, message) = refused(ask(adapter, None, false, 5));
		assert_eq!(field, "model");
		assert!(message.contains("adapter 4") && message.contains("--adapter-ids"), "{message}");
		let (field, message) = refused(ask(None, template, false, 5));
		assert_eq!(field, "prompt_template");
		assert!(message.contains("prompt 9") && message.contains("--prompt-ids"), "{message}");
		// Pinned to theirs, both are billed; an empty pin of the other kind does not matter.
		let theirs = Pins { adapters: Some(HashSet::from([3, 4])), prompts: Some(HashSet::from([9])) };
		let priced = price_request(&s, 0, &theirs, 1_000_000, ask(adapter, template, false, 5)).unwrap();
		assert_eq!((priced.adapter.map(|a| a.0), priced.prompt.map(|p| p.0)), (Some(4), Some(9)));
		let adapters_only = Pins { adapters: Some(HashSet::from([4])), prompts: None };
		assert!(price_request(&s, 0, &adapters_only, 1_000_000, ask(adapter, template, false, 5)).is_ok());
	}

	#[test]
	fn a_budget_below_the_fixed_price_or_the_prompt_is_payment_required() {
		let s = snapshot(1_000, 0, 500, 0);
		let template = Some(ContentHash::repeat_byte(2));
		assert!(matches!(price_request(&s, 0, &Pins::default(), 499, ask(None, template, false, 1)), Err(LedgerError::PaymentRequired(_))));
		// 600 - 500 = 100 pays for 100 tokens at 1000 per 1k; a 100-token prompt leaves none.
		assert!(matches!(price_request(&s, 0, &Pins::default(), 600, ask(None, template, false, 100)), Err(LedgerError::PaymentRequired(_))));
		assert_eq!(price_request(&s, 0, &Pins::default(), 600, ask(None, template, false, 99)).unwrap().max_total_tokens, 100);
	}

	#[test]
	fn tool_calls_are_held_at_the_dearest_tools_price() {
		let s = snapshot(1_000, 0, 0, 0);
		let tools = ToolBudget { prices: vec![(3, 40), (4, 70)], max_calls: 2 };
		assert_eq!(tools.max_cost(), 140);
		let with_tools = |budget| price_request(&s, 0, &Pins::default(), budget, PricedAsk { tools: tools.clone(), ..ask(None, None, false, 10) });
		assert!(matches!(with_tools(139), Err(LedgerError::PaymentRequired(_))));
		// 240 - 140 = 100 pays for 100 tokens.
		assert_eq!(with_tools(240).unwrap().max_total_tokens, 100);
		assert!(tools.covers(&[ToolUse { tool: 3, calls: 1 }, ToolUse { tool: 4, calls: 1 }]));
		assert!(!tools.covers(&[ToolUse { tool: 3, calls: 3 }]), "more calls than held for");
		assert!(!tools.covers(&[ToolUse { tool: 5, calls: 1 }]), "a tool not priced");
		assert!(!tools.covers(&[ToolUse { tool: 3, calls: 1 }, ToolUse { tool: 3, calls: 1 }]), "a tool named twice");
	}

	proptest! {
		/// Whatever the prices, budget and attribution, a request that uses no more tokens than
		/// priced is charged at most its budget by the runtime's own fee function.
		#[test]
		fn the_fee_never_exceeds_the_budget(
			worker_rate in 0u128..10u128.pow(20),
			adapter_rate in 0u128..10u128.pow(20),
			prompt_price in 0u128..10u128.pow(18),
			retrieval in 0u128..10u128.pow(16),
			budget in 0u128..10u128.pow(22),
			prompt_tokens in 0usize..4096,
			items in 0u32..=MAX_ATTRIBUTION_ENTRIES,
			use_adapter: bool,
			use_prompt: bool,
		) {
			let s = snapshot(worker_rate, adapter_rate, prompt_price, retrieval);
			let adapter = use_adapter.then(|| ContentHash::repeat_byte(1));
			let template = use_prompt.then(|| ContentHash::repeat_byte(2));
			let Ok(priced) = price_request(&s, 0, &Pins::default(), budget, ask(adapter, template, true, prompt_tokens)) else { return Ok(()) };
			let tokens = priced.max_total_tokens.min(1 << 20);
			prop_assert!(tokens > prompt_tokens as u64);
			let weighted: Vec<WeightedItem> =
				(0..items).map(|item| WeightedItem { datanet: 0, item, weight_ppm: PPM / items.max(1) }).collect();
			let split = split_fee(&FeeInputs {
				tokens,
				worker_rate_per_1k: worker_rate,
				adapter_rate_per_1k: if use_adapter { adapter_rate } else { 0 },
				prompt_price: if use_prompt { prompt_price } else { 0 },
				retrieval_price: retrieval,
				items: &weighted,
				training: &[TrainingSource { datanet: 0, share_ppm: 600_000, accepted_items: 3 }],
				tools: &[],
				protocol_share: Permill::from_percent(5),
				data_share: Permill::from_percent(30),
			})
			.unwrap();
			prop_assert!(split.fee <= budget, "fee {} > budget {budget}", split.fee);
		}
	}
}
