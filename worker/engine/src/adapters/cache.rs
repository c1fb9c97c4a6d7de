//! The resident-adapter cache, content-addressed by the blake2-256 of the weights file: names are
//! registered to hashes, so one file under two names is loaded once. Loads run on tokio's
//! blocking pool (never on a request's task or the engine thread) and are shared by everyone
//! asking for the same hash meanwhile. Leased adapters are never evicted; idle ones go by LRU
//! when a new one needs room, or after an idle timeout. A request whose adapter finds every
//! resident one leased and no room waits (up to `AdapterLimits::full_wait`) for a lease to end.

use std::{
	collections::HashMap,
	fmt,
	ops::Deref,
	path::{Path, PathBuf},
	sync::{
		atomic::{AtomicU64, Ordering},
		Arc, Mutex, MutexGuard, Weak,
	},
	time::{Duration, Instant},
};

use candle_core::Device;
use futures::future::{BoxFuture, FutureExt, Shared};
use openledger_tasks::blocking;
use tokio::sync::Notify;

use super::{
	hash_hex, load_adapter_known,
	peft::{inspect_impl, KnownWeights}, store::validate_name, AdapterError, AdapterInfo, AdapterLimits,
	AdapterStore,
};
use crate::model::{HostAdapter, LlamaConfig, LoraAdapter};

/// Counters and gauges for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheStats {
	/// `acquire` calls that found the adapter resident.
	pub hits: u64,
	/// `acquire` calls that did not (including those that joined a load already under way).
	pub misses: u64,
	/// Loads that finished and verified.
	pub loads: u64,
	/// Loads that failed (bad file, I/O, changed on disk).
	pub load_failures: u64,
	pub load_seconds_total: f64,
	pub last_load_seconds: f64,
	/// Adapters dropped from residency (LRU, idle, unregistered).
	pub evictions: u64,
	pub resident_bytes: usize,
	pub resident_count: usize,
	/// Loads served from the host tier (a host-to-device copy, no file read).
	pub host_hits: u64,
	pub host_bytes: usize,
	pub host_count: usize,
	pub registered: usize,
	pub loads_in_flight: usize,
	/// `acquire` calls that found every resident adapter in use and waited for room.
	pub full_waits: u64,
}

/// What a load produced: the adapter on the device, whether it came from the host tier, and a
/// new host copy to keep.
struct Loaded {
	adapter: LoraAdapter,
	from_host: bool,
	host_copy: Option<Arc<HostAdapter>>,
}

/// What the cache measures idleness with: nanoseconds since it was made, or in tests a clock
/// they move by hand, so that idleness is tested without waiting on the machine's timing.
#[derive(Clone)]
enum Clock {
	Real(Instant),
	#[cfg(test)]
	Manual(Arc<AtomicU64>),
}

impl Clock {
	fn now_ns(&self) -> u64 {
		match self {
			Self::Real(epoch) => epoch.elapsed().as_nanos() as u64,
			#[cfg(test)]
			Self::Manual(ns) => ns.load(Ordering::Relaxed),
		}
	}
}

/// A resident adapter and when it was last used (on the cache's clock).
struct Resident {
	adapter: LoraAdapter,
	clock: Clock,
	last_used: AtomicU64,
	/// The cache's: told whenever a lease ends, for requests waiting for room.
	room_freed: Arc<Notify>,
}

impl Resident {
	fn touch(&self) {
		self.last_used.store(self.clock.now_ns(), Ordering::Relaxed);
	}
}

/// A use of a resident adapter. While any lease (or clone) exists the adapter stays resident;
/// dropping the last one makes it evictable and counts as its last use.
#[derive(Clone)]
pub struct AdapterLease {
	/// `None` only inside `drop`, which lets go of it before telling waiters.
	entry: Option<Arc<Resident>>,
}

impl AdapterLease {
	fn new(entry: Arc<Resident>) -> Self {
		Self { entry: Some(entry) }
	}

	fn entry(&self) -> &Resident {
		self.entry.as_ref().expect("a lease holds its entry until dropped")
	}

	/// The adapter's content hash, lower-case hex.
	pub fn hash_hex(&self) -> String {
		hash_hex(&self.entry().adapter.hash)
	}

	/// The adapter's content hash (blake2-256 of `adapter_model.safetensors`).
	pub fn hash(&self) -> [u8; 32] {
		self.entry().adapter.hash
	}
}

impl Deref for AdapterLease {
	type Target = LoraAdapter;
	fn deref(&self) -> &LoraAdapter {
		&self.entry().adapter
	}
}

impl Drop for AdapterLease {
	fn drop(&mut self) {
		if let Some(entry) = self.entry.take() {
			entry.touch();
			let room_freed = entry.room_freed.clone();
			// Released first, so a waiter that wakes no longer counts this lease.
			drop(entry);
			room_freed.notify_waiters();
		}
	}
}

/// A request's place among those waiting for room, given back however its wait ends (the
/// request may be dropped mid-wait when its client goes away).
struct WaitSlot<'a>(&'a Inner);

impl Drop for WaitSlot<'_> {
	fn drop(&mut self) {
		self.0.lock().waiting -= 1;
	}
}

/// Tells waiting requests, when dropped, that room may have been freed (a load finished or
/// failed: the bytes it reserved are no longer reserved).
struct NotifyOnDrop(Arc<Notify>);

impl Drop for NotifyOnDrop {
	fn drop(&mut self) {
		self.0.notify_waiters();
	}
}

impl fmt::Debug for AdapterLease {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("AdapterLease")
			.field("hash", &&self.hash_hex()[..16])
			.field("rank", &self.entry().adapter.rank)
			.field("resident_bytes", &self.entry().adapter.resident_bytes)
			.finish()
	}
}

/// How often a request waiting for room looks again without being told: a safety net (a lease
/// that ends, and a load that finishes, tell the waiters), and cheap, as a look loads nothing.
/// (Tests wait longer than they ever should, so a missed notification fails them.)
const FULL_RECHECK: Duration = if cfg!(test) { Duration::from_secs(60) } else { Duration::from_secs(1) };

type SharedLoad = Shared<BoxFuture<'static, Result<AdapterLease, AdapterError>>>;

struct Registration {
	hash: [u8; 32],
	/// What the adapter takes when resident (from its header), to refuse a load with no room.
	bytes: usize,
	dir: PathBuf,
	/// The weights file's hash and stamp at registration, so loads need not hash it again.
	known: KnownWeights,
}

#[derive(Default)]
struct State {
	names: HashMap<String, Registration>,
	/// The map's `Arc` is one reference; any more are leases.
	resident: HashMap<[u8; 32], Arc<Resident>>,
	/// Loads under way, with the bytes each will take: room they have claimed.
	loading: HashMap<[u8; 32], (SharedLoad, usize)>,
	/// Requests waiting for room (at most `max_resident`).
	waiting: usize,
	resident_bytes: usize,
	/// The host tier: host copies of adapters loaded onto the device, by last use.
	host: HashMap<[u8; 32], HostCopy>,
	host_bytes: usize,
	/// Orders the host tier's uses.
	host_clock: u64,
	stats: CacheStats,
}

/// An adapter's weights in host memory (pinned for a GPU), ready to be copied to the device again.
struct HostCopy {
	adapter: Arc<HostAdapter>,
	last_used: u64,
}

impl State {
	fn is_leased(entry: &Arc<Resident>) -> bool {
		Arc::strong_count(entry) > 1
	}

	/// Makes room for an adapter of `bytes` by evicting idle adapters, least recently used first,
	/// and returns them (to be dropped after the lock is released). Leased adapters and loads
	/// under way keep their room; when evicting every idle adapter would not be enough, evicts
	/// nothing: `CacheFull`, or `TooLarge` when even an empty cache would not do.
	fn make_room(&mut self, bytes: usize, limits: &AdapterLimits) -> Result<Vec<Arc<Resident>>, AdapterError> {
		if bytes > limits.max_resident_bytes {
			return Err(AdapterError::TooLarge(format!(
				"the adapter needs {bytes} bytes, more than the whole adapter cache ({} bytes)",
				limits.max_resident_bytes
			)));
		}
		let reserved_bytes: usize = self.loading.values().map(|(_, bytes)| bytes).sum();
		let need_bytes = (self.resident_bytes + reserved_bytes + bytes).saturating_sub(limits.max_resident_bytes);
		let need_count = (self.resident.len() + self.loading.len() + 1).saturating_sub(limits.max_resident);
		if need_bytes == 0 && need_count == 0 {
			return Ok(Vec::new());
		}
		let mut idle: Vec<(u64, [u8; 32], usize)> = self
			.resident
			.iter()
			.filter(|(_, e)| !Self::is_leased(e))
			.map(|(h, e)| (e.last_used.load(Ordering::Relaxed), *h, e.adapter.resident_bytes))
			.collect();
		idle.sort_unstable();
		let (mut freed_bytes, mut freed_count, mut chosen) = (0, 0, Vec::new());
		for (_, h, b) in idle {
			if freed_bytes >= need_bytes && freed_count >= need_count {
				break;
			}
			chosen.push(h);
			freed_bytes += b;
			freed_count += 1;
		}
		if freed_bytes < need_bytes || freed_count < need_count {
			return Err(AdapterError::CacheFull(format!(
				"{} adapters ({} bytes) are in use or loading; {bytes} more bytes do not fit in {} bytes / {} adapters",
				self.resident.len() - chosen.len() + self.loading.len(),
				self.resident_bytes - freed_bytes + reserved_bytes,
				limits.max_resident_bytes,
				limits.max_resident
			)));
		}
		Ok(chosen.iter().filter_map(|h| self.remove(h)).collect())
	}

	/// Removes `hash` from residency; the caller drops the entry after unlocking.
	fn remove(&mut self, hash: &[u8; 32]) -> Option<Arc<Resident>> {
		let entry = self.resident.remove(hash)?;
		self.resident_bytes -= entry.adapter.resident_bytes;
		self.stats.evictions += 1;
		Some(entry)
	}

	/// The host copy of `hash`, marked used.
	fn host_copy(&mut self, hash: &[u8; 32]) -> Option<Arc<HostAdapter>> {
		self.host_clock += 1;
		let clock = self.host_clock;
		self.host.get_mut(hash).map(|copy| {
			copy.last_used = clock;
			copy.adapter.clone()
		})
	}

	/// Keeps `adapter` in the host tier, dropping the least recently used copies over `budget`.
	/// Returns the copies dropped (`adapter` itself when it is not kept), to be freed after the
	/// lock is released.
	fn keep_on_host(&mut self, adapter: Arc<HostAdapter>, budget: usize) -> Vec<Arc<HostAdapter>> {
		let bytes = adapter.resident_bytes;
		if bytes > budget || self.host.contains_key(&adapter.hash) {
			return vec![adapter];
		}
		let mut dropped = Vec::new();
		while self.host_bytes + bytes > budget {
			let oldest = *self.host.iter().min_by_key(|(_, c)| c.last_used).map(|(h, _)| h).expect("over budget, so not empty");
			let copy = self.host.remove(&oldest).expect("just found");
			self.host_bytes -= copy.adapter.resident_bytes;
			dropped.push(copy.adapter);
		}
		self.host_clock += 1;
		self.host_bytes += bytes;
		self.host.insert(adapter.hash, HostCopy { adapter, last_used: self.host_clock });
		dropped
	}
}

/// Frees host copies on the blocking pool: unpinning host memory can take milliseconds, too long
/// for an async thread.
fn free_host_copies(copies: Vec<Arc<HostAdapter>>) {
	if !copies.is_empty() {
		tokio::task::spawn_blocking(move || drop(copies));
	}
}

struct Inner {
	store: AdapterStore,
	base: LlamaConfig,
	device: Device,
	limits: AdapterLimits,
	clock: Clock,
	state: Mutex<State>,
	room_freed: Arc<Notify>,
}

impl Inner {
	fn lock(&self) -> MutexGuard<'_, State> {
		// A panic while holding the lock leaves only plain maps and counters: keep going.
		self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}
}

/// Cheap to clone; all clones share one cache.
#[derive(Clone)]
pub struct AdapterCache {
	inner: Arc<Inner>,
}

impl AdapterCache {
	/// An empty cache over `store` for adapters of `base`, placed on `device`. Register names
	/// with [`scan`](Self::scan) and [`register`](Self::register).
	pub fn new(store: AdapterStore, base: LlamaConfig, limits: AdapterLimits, device: Device) -> Self {
		Self::with_clock(store, base, limits, device, Clock::Real(Instant::now()))
	}

	fn with_clock(store: AdapterStore, base: LlamaConfig, limits: AdapterLimits, device: Device, clock: Clock) -> Self {
		let state = State::default();
		Self {
			inner: Arc::new(Inner {
				store,
				base,
				device,
				limits,
				clock,
				state: Mutex::new(state),
				room_freed: Arc::new(Notify::new()),
			}),
		}
	}

	pub fn store(&self) -> &AdapterStore {
		&self.inner.store
	}

	pub fn limits(&self) -> &AdapterLimits {
		&self.inner.limits
	}

	/// Registers every valid adapter in the store under its directory name (re-registering names
	/// whose file changed); invalid ones are logged and skipped. Returns the names registered.
	pub async fn scan(&self) -> Result<Vec<String>, AdapterError> {
		let inner = self.inner.clone();
		let found = blocking(move || {
			let mut found = Vec::new();
			for (name, dir) in inner.store.scan()? {
				match inspect_impl(&dir, Some(&inner.base), &inner.limits) {
					Ok((info, known)) => found.push((name, dir, known, info)),
					Err(err) => tracing::warn!(adapter = %name, %err, "adapter store: skipping an invalid adapter"),
				}
			}
			Ok(found)
		})
		.await?;
		let mut state = self.inner.lock();
		let mut names = Vec::with_capacity(found.len());
		for (name, dir, known, info) in found {
			let hash = known.hash;
			if let Some(old) = state.names.get(&name) {
				if old.hash != hash {
					tracing::warn!(adapter = %name, hash = %&info.hash[..12], "adapter changed on disk; re-registered");
				}
			}
			tracing::info!(adapter = %name, hash = %&info.hash[..12], rank = info.rank, bytes = info.resident_bytes, "adapter registered");
			state.names.insert(name.clone(), Registration { hash, bytes: info.resident_bytes, dir, known });
			names.push(name);
		}
		state.stats.registered = state.names.len();
		Ok(names)
	}

	/// Registers `name` (vLLM's `load_lora_adapter`): `path` relative to the store root or
	/// absolute inside it, or the store's `<root>/<name>` when `None`. The adapter is checked
	/// against the base model (header only) and hashed now; it is loaded on first use.
	/// Registering a name again with the same content is a no-op; with other content an error.
	pub async fn register(&self, name: &str, path: Option<&Path>) -> Result<AdapterInfo, AdapterError> {
		validate_name(name)?;
		let inner = self.inner.clone();
		let owned_name = name.to_owned();
		let path = path.map(Path::to_path_buf);
		let (dir, info, known) = blocking(move || {
			let dir = match path {
				Some(path) => inner.store.resolve_path(&path)?,
				None => inner.store.resolve(&owned_name)?,
			};
			let (info, known) = inspect_impl(&dir, Some(&inner.base), &inner.limits)?;
			Ok((dir, info, known))
		})
		.await?;
		let hash = known.hash;
		let mut state = self.inner.lock();
		if let Some(existing) = state.names.get_mut(name) {
			if existing.hash != hash {
				return Err(AdapterError::AlreadyRegistered(name.to_owned()));
			}
			existing.dir = dir;
			existing.known = known;
			return Ok(info);
		}
		state.names.insert(name.to_owned(), Registration { hash, bytes: info.resident_bytes, dir, known });
		state.stats.registered = state.names.len();
		drop(state);
		tracing::info!(adapter = %name, hash = %&info.hash[..12], rank = info.rank, bytes = info.resident_bytes, "adapter registered");
		Ok(info)
	}

	/// Unregisters `name` (vLLM's `unload_lora_adapter`). Its resident copy is dropped now if no
	/// other name shares it and nothing leases it; otherwise it ages out as usual.
	pub fn unregister(&self, name: &str) -> Result<(), AdapterError> {
		validate_name(name)?;
		let mut state = self.inner.lock();
		let Some(registration) = state.names.remove(name) else {
			return Err(AdapterError::NotFound(format!("adapter `{name}`")));
		};
		state.stats.registered = state.names.len();
		let shared = state.names.values().any(|r| r.hash == registration.hash);
		let idle = state.resident.get(&registration.hash).is_some_and(|e| !State::is_leased(e));
		let dropped = if !shared && idle { state.remove(&registration.hash) } else { None };
		drop(state);
		tracing::info!(adapter = %name, unloaded = dropped.is_some(), "adapter unregistered");
		Ok(())
	}

	/// A lease on the adapter registered as `name`, loading it first if it is not resident.
	/// When every resident adapter is leased (or loading) and this one does not fit, waits up
	/// to `full_wait` for room, then fails with `CacheFull`; so does a request that finds
	/// `max_resident` others waiting already. Waiting holds the request's admission permit, so
	/// waiters count against `--max-queue` like requests being served.
	pub async fn acquire(&self, name: &str) -> Result<AdapterLease, AdapterError> {
		validate_name(name)?;
		let deadline = Instant::now() + self.inner.limits.full_wait;
		let mut waiting: Option<WaitSlot<'_>> = None;
		loop {
			// Listening before trying, so room freed in between is not missed.
			let room_freed = self.inner.room_freed.notified();
			tokio::pin!(room_freed);
			room_freed.as_mut().enable();
			let reason = match self.acquire_now(name).await {
				Err(AdapterError::CacheFull(reason)) => reason,
				done => {
					if waiting.is_some() {
						tracing::debug!(adapter = %name, "room found after waiting");
					}
					return done;
				},
			};
			let left = deadline.saturating_duration_since(Instant::now());
			if left.is_zero() {
				return Err(AdapterError::CacheFull(reason));
			}
			if waiting.is_none() {
				// As many may wait as fit at once: more would wait a whole turnover of the
				// cache, holding their admission permits all along.
				let mut state = self.inner.lock();
				if state.waiting >= self.inner.limits.max_resident {
					return Err(AdapterError::CacheFull(format!("{reason}; {} requests already wait for room", state.waiting)));
				}
				state.waiting += 1;
				state.stats.full_waits += 1;
				drop(state);
				waiting = Some(WaitSlot(&self.inner));
				tracing::info!(adapter = %name, "every resident adapter is in use; waiting for room");
			}
			let _ = tokio::time::timeout(left.min(FULL_RECHECK), room_freed).await;
		}
	}

	/// One try of [`acquire`](Self::acquire): a resident lease, a shared load, or `CacheFull`
	/// without loading when even evicting every idle adapter would leave no room.
	async fn acquire_now(&self, name: &str) -> Result<AdapterLease, AdapterError> {
		let (load, evicted) = {
			let mut state = self.inner.lock();
			let Some(registration) = state.names.get(name) else {
				return Err(AdapterError::NotFound(format!("adapter `{name}`")));
			};
			let (hash, bytes, dir, known) = (registration.hash, registration.bytes, registration.dir.clone(), registration.known);
			if let Some(entry) = state.resident.get(&hash) {
				entry.touch();
				let lease = AdapterLease::new(entry.clone());
				state.stats.hits += 1;
				return Ok(lease);
			}
			match state.loading.get(&hash) {
				Some((load, _)) => {
					let load = load.clone();
					state.stats.misses += 1;
					(load, Vec::new())
				},
				None => {
					// The room is made now, not when the load ends: a hit meanwhile cannot
					// take it, so a finished load is never thrown away for want of room.
					let evicted = state.make_room(bytes, &self.inner.limits)?;
					state.stats.misses += 1;
					let host_copy = state.host_copy(&hash);
					let load = self.start_load(name.to_owned(), known, dir, host_copy);
					state.loading.insert(hash, (load.clone(), bytes));
					state.stats.loads_in_flight = state.loading.len();
					(load, evicted)
				},
			}
		};
		for victim in &evicted {
			tracing::info!(hash = %&hash_hex(&victim.adapter.hash)[..12], bytes = victim.adapter.resident_bytes, "adapter evicted (LRU)");
		}
		drop(evicted);
		load.await
	}

	/// Spawns the load of `hash`: a tokio task (so it finishes even if every waiter goes away)
	/// that, on the blocking pool, copies the host tier's copy to the device when there is one,
	/// and otherwise reads `dir` (into host memory first when the host tier is on), then verifies
	/// and inserts.
	fn start_load(&self, name: String, known: KnownWeights, dir: PathBuf, host_copy: Option<Arc<HostAdapter>>) -> SharedLoad {
		let hash = known.hash;
		let inner = self.inner.clone();
		let task = tokio::spawn(async move {
			let started = Instant::now();
			let reader = inner.clone();
			let loaded = blocking(move || {
				let to_device = |on_host: &HostAdapter| {
					on_host.to_device(&reader.device).map_err(|e| AdapterError::Internal(format!("copying the adapter to the device: {e}")))
				};
				if let Some(copy) = host_copy {
					return Ok(Loaded { adapter: to_device(&copy)?, from_host: true, host_copy: None });
				}
				let dir = reader.store.check_dir(&dir)?;
				if reader.limits.max_host_bytes == 0 {
					let adapter = load_adapter_known(&dir, &reader.base, &reader.limits, &reader.device, Some(&known))?;
					return Ok(Loaded { adapter, from_host: false, host_copy: None });
				}
				let on_cpu = load_adapter_known(&dir, &reader.base, &reader.limits, &Device::Cpu, Some(&known))?;
				let keep = on_cpu.resident_bytes <= reader.limits.max_host_bytes;
				let on_host = if keep { HostAdapter::pack(&on_cpu, &reader.device) } else { HostAdapter::pack_once(&on_cpu) }
					.map_err(|e| AdapterError::Internal(format!("packing the adapter in host memory: {e}")))?;
				drop(on_cpu);
				let adapter = to_device(&on_host)?;
				Ok(Loaded { adapter, from_host: false, host_copy: keep.then(|| Arc::new(on_host)) })
			})
			.await;
			AdapterCache { inner }.finish_load(&name, hash, loaded, started.elapsed())
		});
		async move { task.await.unwrap_or_else(|e| Err(AdapterError::Internal(format!("adapter load task failed: {e}")))) }
			.boxed()
			.shared()
	}

	fn finish_load(
		&self,
		name: &str,
		hash: [u8; 32],
		loaded: Result<Loaded, AdapterError>,
		elapsed: Duration,
	) -> Result<AdapterLease, AdapterError> {
		// Declared before the lock, so waiters are told after it is released, on every path.
		let _tell_waiters = NotifyOnDrop(self.inner.room_freed.clone());
		let mut state = self.inner.lock();
		state.loading.remove(&hash);
		state.stats.loads_in_flight = state.loading.len();
		let (adapter, dropped_host_copies) = match loaded {
			Ok(Loaded { adapter, from_host, host_copy }) if adapter.hash == hash => {
				state.stats.host_hits += u64::from(from_host);
				let dropped = match host_copy {
					Some(copy) => state.keep_on_host(copy, self.inner.limits.max_host_bytes),
					None => Vec::new(),
				};
				(adapter, dropped)
			},
			Ok(Loaded { adapter, host_copy, .. }) => {
				state.stats.load_failures += 1;
				drop(state);
				free_host_copies(host_copy.into_iter().collect());
				let err = AdapterError::HashMismatch {
					name: name.to_owned(),
					expected: hash_hex(&hash),
					found: hash_hex(&adapter.hash),
				};
				tracing::warn!(adapter = %name, %err, "adapter load failed");
				return Err(err);
			},
			Err(err) => {
				state.stats.load_failures += 1;
				drop(state);
				tracing::warn!(adapter = %name, hash = %&hash_hex(&hash)[..12], %err, "adapter load failed");
				return Err(err);
			},
		};
		state.stats.loads += 1;
		state.stats.load_seconds_total += elapsed.as_secs_f64();
		state.stats.last_load_seconds = elapsed.as_secs_f64();
		let bytes = adapter.resident_bytes;
		let inserted = self.insert(&mut state, hash, adapter);
		drop(state);
		free_host_copies(dropped_host_copies);
		let (lease, evicted) = inserted.inspect_err(|err| {
			tracing::warn!(adapter = %name, hash = %&hash_hex(&hash)[..12], bytes, %err, "adapter loaded but not kept");
		})?;
		for victim in &evicted {
			tracing::info!(hash = %&hash_hex(&victim.adapter.hash)[..12], bytes = victim.adapter.resident_bytes, "adapter evicted (LRU)");
		}
		drop(evicted);
		tracing::info!(
			adapter = %name,
			hash = %&hash_hex(&hash)[..12],
			bytes,
			ms = elapsed.as_millis() as u64,
			"adapter loaded"
		);
		Ok(lease)
	}

	/// Makes room (normally already made when the load started) and inserts; the evicted
	/// entries are returned to be dropped after the lock is released.
	fn insert(
		&self,
		state: &mut State,
		hash: [u8; 32],
		adapter: LoraAdapter,
	) -> Result<(AdapterLease, Vec<Arc<Resident>>), AdapterError> {
		if let Some(entry) = state.resident.get(&hash) {
			entry.touch();
			return Ok((AdapterLease::new(entry.clone()), Vec::new()));
		}
		let limits = &self.inner.limits;
		let bytes = adapter.resident_bytes;
		let evicted = state.make_room(bytes, limits)?;
		let entry = Arc::new(Resident {
			adapter,
			clock: self.inner.clock.clone(),
			last_used: AtomicU64::new(0),
			room_freed: self.inner.room_freed.clone(),
		});
		entry.touch();
		state.resident.insert(hash, entry.clone());
		state.resident_bytes += bytes;
		Ok((AdapterLease::new(entry), evicted))
	}

	/// Drops every unleased adapter unused for at least `idle_for`; returns how many.
	pub fn evict_idle(&self, idle_for: Duration) -> usize {
		let now = self.inner.clock.now_ns();
		let idle_ns = idle_for.as_nanos().min(u64::MAX as u128) as u64;
		let mut state = self.inner.lock();
		let stale: Vec<[u8; 32]> = state
			.resident
			.iter()
			.filter(|(_, e)| !State::is_leased(e) && now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= idle_ns)
			.map(|(h, _)| *h)
			.collect();
		let evicted: Vec<_> = stale.iter().filter_map(|h| state.remove(h)).collect();
		drop(state);
		for victim in &evicted {
			tracing::info!(hash = %&hash_hex(&victim.adapter.hash)[..12], bytes = victim.adapter.resident_bytes, "adapter unloaded (idle)");
		}
		evicted.len()
	}

	/// Every `every`, unloads adapters idle for `idle_for`; the caller runs it (and stops it),
	/// and it ends by itself when the cache is dropped.
	pub fn idle_reaper(&self, idle_for: Duration, every: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
		let weak: Weak<Inner> = Arc::downgrade(&self.inner);
		async move {
			let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
			ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
			ticks.tick().await;
			loop {
				ticks.tick().await;
				let Some(inner) = weak.upgrade() else { break };
				AdapterCache { inner }.evict_idle(idle_for);
			}
		}
	}

	pub fn stats(&self) -> CacheStats {
		let state = self.inner.lock();
		CacheStats {
			resident_bytes: state.resident_bytes,
			resident_count: state.resident.len(),
			host_bytes: state.host_bytes,
			host_count: state.host.len(),
			..state.stats.clone()
		}
	}

	/// `(name, hash hex, resident)` for every registered name, sorted by name (for `/v1/models`).
	pub fn list(&self) -> Vec<(String, String, bool)> {
		let state = self.inner.lock();
		let mut list: Vec<_> = state
			.names
			.iter()
			.map(|(name, r)| (name.clone(), hash_hex(&r.hash), state.resident.contains_key(&r.hash)))
			.collect();
		list.sort();
		list
	}

	/// The hash `name` is registered to, if any.
	pub fn hash_of(&self, name: &str) -> Option<String> {
		self.inner.lock().names.get(name).map(|r| hash_hex(&r.hash))
	}
}

#[cfg(test)]
mod tests {
	use std::fs;

	use super::*;
	use crate::{
		adapters::{test_util::tiny_config, write_random_adapter, ADAPTER_WEIGHTS_FILE},
		model::Projection,
	};

	struct Fixture {
		_tmp: tempfile::TempDir,
		root: PathBuf,
		/// f32 bytes of one adapter written by `adapter`.
		bytes: usize,
	}

	impl Fixture {
		fn new() -> Self {
			let tmp = tempfile::tempdir().unwrap();
			let root = tmp.path().join("store");
			fs::create_dir_all(&root).unwrap();
			let probe = write_random_adapter(
				&tmp.path().join("probe"),
				&tiny_config(false),
				2,
				4.0,
				&Projection::ALL,
				0,
				false,
				false,
			)
			.unwrap();
			Self { _tmp: tmp, root, bytes: probe.resident_bytes }
		}

		/// Writes adapter `name` (rank 2, all projections) with `seed`.
		fn adapter(&self, name: &str, seed: u64) -> AdapterInfo {
			write_random_adapter(
				&self.root.join(name),
				&tiny_config(false),
				2,
				4.0,
				&Projection::ALL,
				seed,
				false,
				false,
			)
			.unwrap()
		}

		async fn cache(&self, max_resident: usize, max_resident_bytes: usize) -> AdapterCache {
			self.cache_on(max_resident, max_resident_bytes, Clock::Real(Instant::now())).await
		}

		async fn cache_on(&self, max_resident: usize, max_resident_bytes: usize, clock: Clock) -> AdapterCache {
			let limits = AdapterLimits { max_resident, max_resident_bytes, full_wait: Duration::ZERO, ..Default::default() };
			let store = AdapterStore::open(&self.root).unwrap();
			let cache = AdapterCache::with_clock(store, tiny_config(false), limits, Device::Cpu, clock);
			cache.scan().await.unwrap();
			cache
		}
	}

	/// Two adapters fit the device, three the host tier: an adapter evicted from the device comes
	/// back from the host tier (its file is not read again: it is gone), one pushed out of the
	/// host tier comes from disk (so without its file it fails), and the tiers' bytes are kept.
	#[tokio::test]
	async fn an_adapter_evicted_from_the_device_returns_from_the_host_tier() {
		let f = Fixture::new();
		for (i, name) in ["a0", "a1", "a2", "a3"].iter().enumerate() {
			f.adapter(name, i as u64 + 1);
		}
		let limits = AdapterLimits { max_resident: 2, max_host_bytes: 3 * f.bytes, ..Default::default() };
		let cache = AdapterCache::new(AdapterStore::open(&f.root).unwrap(), tiny_config(false), limits, Device::Cpu);
		cache.scan().await.unwrap();
		for name in ["a0", "a1", "a2", "a3"] {
			drop(cache.acquire(name).await.unwrap());
			tick().await;
		}
		let stats = cache.stats();
		assert_eq!((stats.loads, stats.host_hits, stats.resident_count), (4, 0, 2));
		assert_eq!((stats.host_count, stats.host_bytes), (3, 3 * f.bytes), "a0 left the host tier for a3");
		assert_eq!(resident(&cache), ["a2", "a3"]);
		for name in ["a0", "a1"] {
			fs::remove_file(f.root.join(name).join(ADAPTER_WEIGHTS_FILE)).unwrap();
		}
		let lease = cache.acquire("a1").await.expect("a1 comes back from the host tier");
		assert_eq!(lease.hash(), cache.list().iter().find(|(n, _, _)| n == "a1").map(|(_, h, _)| hex::decode(h).unwrap()).unwrap()[..]);
		drop(lease);
		tick().await;
		assert_eq!((cache.stats().loads, cache.stats().host_hits), (5, 1));
		assert!(cache.acquire("a0").await.is_err(), "a0 was only on disk, and its file is gone");
	}

	/// An adapter larger than the host tier's whole budget loads onto the device and is not kept.
	#[tokio::test]
	async fn an_adapter_over_the_host_budget_is_not_kept() {
		let f = Fixture::new();
		f.adapter("big", 1);
		let limits = AdapterLimits { max_host_bytes: f.bytes - 1, ..Default::default() };
		let cache = AdapterCache::new(AdapterStore::open(&f.root).unwrap(), tiny_config(false), limits, Device::Cpu);
		cache.scan().await.unwrap();
		drop(cache.acquire("big").await.expect("loads all the same"));
		let stats = cache.stats();
		assert_eq!((stats.loads, stats.resident_count, stats.host_count, stats.host_bytes), (1, 1, 0, 0));
	}

	fn resident(cache: &AdapterCache) -> Vec<String> {
		cache.list().into_iter().filter(|(_, _, r)| *r).map(|(n, _, _)| n).collect()
	}

	async fn tick() {
		tokio::time::sleep(Duration::from_millis(2)).await;
	}

	#[test]
	fn cache_and_lease_are_send_sync() {
		fn check<T: Send + Sync + 'static>() {}
		check::<AdapterCache>();
		check::<AdapterLease>();
		check::<AdapterError>();
	}

	#[tokio::test]
	async fn hits_misses_and_loads() {
		let fx = Fixture::new();
		let info = fx.adapter("a", 1);
		let cache = fx.cache(4, 1 << 30).await;
		assert_eq!(cache.list(), [("a".to_string(), info.hash.clone(), false)]);
		let lease = cache.acquire("a").await.unwrap();
		assert_eq!(lease.hash_hex(), info.hash);
		assert_eq!(lease.rank, 2);
		assert!(lease.weights(1, Projection::Down).is_some());
		drop(lease);
		let again = cache.acquire("a").await.unwrap();
		let stats = cache.stats();
		assert_eq!((stats.hits, stats.misses, stats.loads, stats.load_failures), (1, 1, 1, 0));
		assert_eq!((stats.resident_count, stats.resident_bytes, stats.registered), (1, info.resident_bytes, 1));
		assert!(stats.load_seconds_total > 0.0 && stats.last_load_seconds > 0.0);
		drop(again);
		assert!(matches!(cache.acquire("nope").await, Err(AdapterError::NotFound(_))));
		assert!(matches!(cache.acquire("../a").await, Err(AdapterError::InvalidName(_))));
		assert_eq!(resident(&cache), ["a"]);
	}

	#[tokio::test]
	async fn lru_evicts_the_least_recently_used_idle_adapter() {
		let fx = Fixture::new();
		for (name, seed) in [("a", 1), ("b", 2), ("c", 3)] {
			fx.adapter(name, seed);
		}
		let cache = fx.cache(2, 1 << 30).await;
		drop(cache.acquire("a").await.unwrap());
		tick().await;
		drop(cache.acquire("b").await.unwrap());
		tick().await;
		drop(cache.acquire("a").await.unwrap()); // a is now more recent than b
		tick().await;
		drop(cache.acquire("c").await.unwrap());
		assert_eq!(resident(&cache), ["a", "c"]);
		assert_eq!(cache.stats().evictions, 1);
		// By bytes too: a budget of two adapters behaves the same.
		let cache = fx.cache(10, 2 * fx.bytes).await;
		for name in ["a", "b", "a", "c"] {
			drop(cache.acquire(name).await.unwrap());
			tick().await;
		}
		assert_eq!(resident(&cache), ["a", "c"]);
		assert_eq!(cache.stats().resident_bytes, 2 * fx.bytes);
	}

	#[tokio::test]
	async fn leased_adapters_are_never_evicted() {
		let fx = Fixture::new();
		for (name, seed) in [("a", 1), ("b", 2), ("c", 3)] {
			fx.adapter(name, seed);
		}
		// Room for one: while `a` is leased, `b` cannot come in.
		let cache = fx.cache(1, 1 << 30).await;
		let a = cache.acquire("a").await.unwrap();
		let err = cache.acquire("b").await.unwrap_err();
		assert!(matches!(err, AdapterError::CacheFull(_)), "{err:?}");
		assert_eq!(err.http_status(), 503);
		assert_eq!(resident(&cache), ["a"]);
		let a2 = a.clone();
		drop(a);
		assert!(matches!(cache.acquire("b").await, Err(AdapterError::CacheFull(_))), "a clone still leases");
		drop(a2);
		let b = cache.acquire("b").await.unwrap();
		assert_eq!(resident(&cache), ["b"]);
		drop(b);

		// Room for two by bytes: the leased `a` is older than the idle `b`, yet `b` is evicted.
		let cache = fx.cache(10, 2 * fx.bytes + fx.bytes / 2).await;
		let a = cache.acquire("a").await.unwrap();
		tick().await;
		drop(cache.acquire("b").await.unwrap());
		tick().await;
		let c = cache.acquire("c").await.unwrap();
		assert_eq!(resident(&cache), ["a", "c"]);
		// Both leased: `b` does not fit and nothing is evicted.
		assert!(matches!(cache.acquire("b").await, Err(AdapterError::CacheFull(_))));
		assert_eq!(resident(&cache), ["a", "c"]);
		assert!(a.weights(0, Projection::Q).is_some() && c.weights(0, Projection::Q).is_some());
		// An adapter bigger than the whole budget is TooLarge, not CacheFull.
		let cache = fx.cache(10, fx.bytes - 1).await;
		assert!(matches!(cache.acquire("a").await, Err(AdapterError::TooLarge(_))));
	}

	/// Until `full_waits` reaches `n`: a spawned request has started waiting.
	async fn until_full_waits(cache: &AdapterCache, n: u64) {
		let deadline = Instant::now() + Duration::from_secs(10);
		while cache.stats().full_waits < n {
			assert!(Instant::now() < deadline, "no request started waiting");
			tokio::time::sleep(Duration::from_millis(10)).await;
		}
	}

	/// With every resident adapter leased, a request waits for a lease to end instead of being
	/// refused, loads nothing meanwhile, and gives up with `CacheFull` when its wait runs out.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn a_full_cache_makes_requests_wait_for_room() {
		let fx = Fixture::new();
		for (name, seed) in [("a", 1), ("b", 2), ("c", 3)] {
			fx.adapter(name, seed);
		}
		let limits = AdapterLimits { max_resident: 1, full_wait: Duration::from_secs(20), ..Default::default() };
		let cache = AdapterCache::new(AdapterStore::open(&fx.root).unwrap(), tiny_config(false), limits, Device::Cpu);
		cache.scan().await.unwrap();
		let a = cache.acquire("a").await.unwrap();
		let waiting = tokio::spawn({
			let cache = cache.clone();
			async move { cache.acquire("b").await }
		});
		until_full_waits(&cache, 1).await;
		assert!(!waiting.is_finished(), "b waits while a is leased");
		let stats = cache.stats();
		assert_eq!((stats.full_waits, stats.loads, stats.load_failures), (1, 1, 0), "nothing loaded while waiting");
		let released = Instant::now();
		drop(a);
		let b = waiting.await.unwrap().expect("b gets a's room");
		assert!(released.elapsed() < Duration::from_secs(5), "{:?}", released.elapsed());
		assert_eq!(resident(&cache), ["b"]);
		assert_eq!(cache.stats().loads, 2);

		// No more wait than fit at once: with one slot, a second waiter is refused at once.
		let c = cache.clone();
		let first = tokio::spawn(async move { c.acquire("a").await.map(drop) });
		until_full_waits(&cache, 2).await;
		let started = Instant::now();
		let err = cache.acquire("c").await.unwrap_err();
		assert!(matches!(&err, AdapterError::CacheFull(m) if m.contains("already wait")), "{err:?}");
		assert!(started.elapsed() < Duration::from_secs(5));
		first.abort();
		let _ = first.await;
		// An abandoned wait gives its place back: c waits (it is not refused as above).
		let c = cache.clone();
		let again = tokio::spawn(async move { c.acquire("c").await });
		until_full_waits(&cache, 3).await;
		drop(b);
		drop(again.await.unwrap().expect("c gets b's room"));

		// A wait that runs out ends in CacheFull, 503.
		let limits = AdapterLimits { max_resident: 1, full_wait: Duration::from_millis(300), ..Default::default() };
		let short = AdapterCache::new(AdapterStore::open(&fx.root).unwrap(), tiny_config(false), limits, Device::Cpu);
		short.scan().await.unwrap();
		let _c = short.acquire("c").await.unwrap();
		let started = Instant::now();
		let err = short.acquire("a").await.unwrap_err();
		assert!(matches!(err, AdapterError::CacheFull(_)), "{err:?}");
		assert!(started.elapsed() >= Duration::from_millis(300));
	}

	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn concurrent_acquires_load_once() {
		let fx = Fixture::new();
		fx.adapter("a", 1);
		let cache = fx.cache(4, 1 << 30).await;
		let tasks: Vec<_> = (0..16)
			.map(|_| {
				let cache = cache.clone();
				tokio::spawn(async move { cache.acquire("a").await.map(|l| l.hash) })
			})
			.collect();
		let mut hashes = Vec::new();
		for task in tasks {
			hashes.push(task.await.unwrap().unwrap());
		}
		assert!(hashes.windows(2).all(|w| w[0] == w[1]));
		let stats = cache.stats();
		assert_eq!(stats.loads, 1);
		assert_eq!(stats.hits + stats.misses, 16);
		assert!(stats.misses >= 1);
		assert_eq!((stats.resident_count, stats.loads_in_flight), (1, 0));
	}

	#[tokio::test]
	async fn idle_adapters_are_unloaded() {
		let fx = Fixture::new();
		fx.adapter("a", 1);
		fx.adapter("b", 2);
		let ms = |n: u64| n * 1_000_000;
		let time = Arc::new(AtomicU64::new(0));
		let cache = fx.cache_on(4, 1 << 30, Clock::Manual(time.clone())).await;
		let a = cache.acquire("a").await.unwrap();
		drop(cache.acquire("b").await.unwrap());
		time.store(ms(30), Ordering::Relaxed);
		assert_eq!(cache.evict_idle(Duration::from_secs(60)), 0, "nothing idle that long");
		assert_eq!(cache.evict_idle(Duration::from_millis(31)), 0, "b is idle 30 ms, not 31");
		assert_eq!(cache.evict_idle(Duration::from_millis(30)), 1, "only the unleased one");
		assert_eq!(resident(&cache), ["a"]);
		// Dropping the lease counts as a use: not idle yet.
		drop(a);
		assert_eq!(cache.evict_idle(Duration::from_millis(1)), 0);
		time.store(ms(40), Ordering::Relaxed);
		let reaper = tokio::spawn(cache.idle_reaper(Duration::from_millis(10), Duration::from_millis(5)));
		let deadline = Instant::now() + Duration::from_secs(10);
		while !resident(&cache).is_empty() {
			assert!(Instant::now() < deadline, "the reaper unloaded nothing");
			tokio::time::sleep(Duration::from_millis(5)).await;
		}
		assert_eq!(cache.stats().evictions, 2);
		// The reaper ends once the cache is gone.
		drop(cache);
		tokio::time::timeout(Duration::from_secs(5), reaper).await.unwrap().unwrap();
	}

	#[tokio::test]
	async fn names_share_one_resident_copy_per_hash() {
		let fx = Fixture::new();
		let info = fx.adapter("a", 1);
		fx.adapter("b", 1); // same seed, same bytes
		fx.adapter("c", 2);
		let cache = fx.cache(4, 1 << 30).await;
		assert_eq!(cache.hash_of("a"), cache.hash_of("b"));
		assert_ne!(cache.hash_of("a"), cache.hash_of("c"));
		let a = cache.acquire("a").await.unwrap();
		let b = cache.acquire("b").await.unwrap();
		assert_eq!(a.hash, b.hash);
		let stats = cache.stats();
		assert_eq!((stats.loads, stats.hits, stats.misses, stats.resident_count), (1, 1, 1, 1));
		assert_eq!(stats.resident_bytes, info.resident_bytes);
		assert_eq!(resident(&cache), ["a", "b"]);
		drop((a, b));
		// Unregistering one name keeps the copy the other name still uses.
		cache.unregister("a").unwrap();
		assert_eq!(resident(&cache), ["b"]);
		assert_eq!(cache.stats().resident_count, 1);
		cache.unregister("b").unwrap();
		assert_eq!(cache.stats().resident_count, 0);
		assert!(matches!(cache.unregister("b"), Err(AdapterError::NotFound(_))));
	}

	#[tokio::test]
	async fn register_and_changed_files() {
		let fx = Fixture::new();
		let info = fx.adapter("a", 1);
		fx.adapter("nested-parent/child", 2);
		let outside = fx._tmp.path().join("outside");
		write_random_adapter(&outside, &tiny_config(false), 2, 4.0, &[Projection::Q], 9, false, false).unwrap();
		let cache = fx.cache(4, 1 << 30).await;
		assert_eq!(cache.list().len(), 1, "nested-parent has no adapter files itself");

		// Admin paths: relative, absolute inside, outside, climbing out.
		let child = cache.register("child", Some(Path::new("nested-parent/child"))).await.unwrap();
		assert_eq!(cache.hash_of("child"), Some(child.hash));
		let same = cache.register("alias", Some(&fx.root.join("a"))).await.unwrap();
		assert_eq!(same.hash, info.hash);
		assert!(matches!(cache.register("x", Some(&outside)).await, Err(AdapterError::OutsideStore(_))));
		assert!(matches!(cache.register("x", Some(Path::new("../outside"))).await, Err(AdapterError::OutsideStore(_))));
		assert!(matches!(cache.register("x", None).await, Err(AdapterError::NotFound(_))));
		assert!(matches!(cache.register("bad/name", None).await, Err(AdapterError::InvalidName(_))));
		// Same name, same content: fine; other content: refused.
		cache.register("a", None).await.unwrap();
		let err = cache.register("a", Some(Path::new("nested-parent/child"))).await.unwrap_err();
		assert!(matches!(err, AdapterError::AlreadyRegistered(_)), "{err:?}");

		// The file is replaced after registration: the load notices.
		fx.adapter("a", 3);
		let err = cache.acquire("a").await.unwrap_err();
		assert!(matches!(err, AdapterError::HashMismatch { .. }), "{err:?}");
		assert_eq!(cache.stats().load_failures, 1);
		// A rescan picks up the new content.
		cache.scan().await.unwrap();
		assert!(cache.acquire("a").await.is_ok());
		// A corrupted file fails to load, and the failure is shared, counted and not cached.
		fs::write(fx.root.join("nested-parent/child").join(ADAPTER_WEIGHTS_FILE), b"garbage!").unwrap();
		assert!(cache.acquire("child").await.is_err());
		assert!(cache.acquire("child").await.is_err());
		assert_eq!(cache.stats().load_failures, 3);
	}
}
