//! The paged key/value cache. Every layer's keys and values live in one pool of fixed-size blocks
//! shared by all sequences, and each sequence keeps a table of the blocks its positions use (as
//! vLLM's PagedAttention does). Memory follows the tokens actually cached, not each sequence's
//! longest possible length; a finished sequence's blocks go straight back to the pool, and
//! nothing is copied when a sequence grows. A forked cache (the `n` answers of one prompt) shares
//! its parent's full blocks, counted by reference, and copies only the last, partly filled one:
//! no block is ever written by two sequences.
//!
//! The pool also keeps the full blocks of finished prompts, and of prompts with their answers,
//! for reuse (prefix caching, as vLLM does): a later prompt that starts with the same tokens,
//! under the same adapter, takes those blocks instead of computing them again, so a system
//! prompt, the tool definitions every request of an agent repeats, or the last turn of a chat
//! are prefilled once. Kept blocks nobody uses stay in the pool's
//! free room and are taken back, least recently used first, before the pool grows: the cache
//! never makes the pool larger than the sequences in it would.

use std::{
	collections::{BTreeMap, HashMap},
	hash::{BuildHasher, Hasher, RandomState},
	sync::{Arc, Mutex, MutexGuard},
};

use candle_core::{DType, Device, Result, Tensor};

/// Tokens per block: small enough that a sequence wastes little of its last block, large enough
/// that a head's keys in a block are one contiguous run (16 × head_dim floats).
pub const BLOCK_TOKENS: usize = 16;

/// Blocks allocated the first time the pool is used; it then doubles up to its limit.
const FIRST_BLOCKS: usize = 64;

/// The pool size (in tokens) that holds `sequences` sequences of up to `tokens_each` tokens at
/// once: each one's last block may be partly used.
pub fn tokens_for(sequences: usize, tokens_each: usize) -> usize {
	sequences * tokens_each.div_ceil(BLOCK_TOKENS) * BLOCK_TOKENS
}

/// The pool has no free block left and may not grow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the KV cache is full: {needed} more blocks of {BLOCK_TOKENS} tokens needed, {free} free of {max_blocks}")]
pub struct KvPoolFull {
	pub needed: usize,
	pub free: usize,
	pub max_blocks: usize,
}

/// Shapes of what the pool stores.
#[derive(Clone, Copy, Debug)]
pub struct KvShape {
	pub num_layers: usize,
	pub kv_heads: usize,
	pub head_dim: usize,
}

/// Names a full block of a prompt by everything that decides its keys and values: the adapter
/// and every token up to the block's end. Two keyed 64-bit hashes, so a client cannot make
/// two prompts collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixKey(u128);

/// A shared handle to the block pool; clones are the same pool.
#[derive(Clone)]
pub struct KvPool {
	inner: Arc<Mutex<PoolInner>>,
	hashers: Arc<[RandomState; 2]>,
}

struct PoolInner {
	shape: KvShape,
	device: Device,
	/// Per layer, keys and values, each `[capacity, kv_heads, BLOCK_TOKENS, head_dim]` in f32;
	/// empty until the first block is taken.
	layers: Vec<(Tensor, Tensor)>,
	capacity: usize,
	max_blocks: usize,
	/// Free block ids, the lowest last so it is taken first.
	free: Vec<u32>,
	/// Per block, how many caches use it (0: free or kept idle).
	users: Vec<u32>,
	/// Prompt blocks kept for reuse, by key, and per block its key while kept.
	kept: HashMap<PrefixKey, u32>,
	key_of: Vec<Option<PrefixKey>>,
	/// Kept blocks no cache uses, by the tick they were released at (the oldest is taken back
	/// first), and per block its tick while idle.
	idle: BTreeMap<u64, u32>,
	idle_since: Vec<u64>,
	tick: u64,
}

impl KvPool {
	/// A pool that may hold up to `max_tokens` tokens (rounded up to whole blocks). Nothing is
	/// allocated until a sequence caches its first token.
	pub fn new(shape: KvShape, max_tokens: usize, device: &Device) -> Self {
		let max_blocks = max_tokens.div_ceil(BLOCK_TOKENS).max(1);
		let inner = PoolInner {
			shape,
			device: device.clone(),
			layers: Vec::new(),
			capacity: 0,
			max_blocks,
			free: Vec::new(),
			users: Vec::new(),
			kept: HashMap::new(),
			key_of: Vec::new(),
			idle: BTreeMap::new(),
			idle_since: Vec::new(),
			tick: 0,
		};
		Self { inner: Arc::new(Mutex::new(inner)), hashers: Arc::new([RandomState::new(), RandomState::new()]) }
	}

	fn lock(&self) -> MutexGuard<'_, PoolInner> {
		self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	/// The most tokens the pool may hold: its whole limit, in blocks.
	pub fn max_tokens(&self) -> usize {
		self.lock().max_blocks * BLOCK_TOKENS
	}

	/// An empty sequence cache drawing on this pool.
	pub fn cache(&self) -> KvCache {
		KvCache { pool: self.clone(), blocks: Vec::new(), len: 0 }
	}

	/// Bytes of key/value memory allocated (in use or free).
	pub fn allocated_bytes(&self) -> usize {
		let inner = self.lock();
		inner.capacity * inner.block_bytes()
	}

	/// Blocks in use by sequences.
	pub fn used_blocks(&self) -> usize {
		let inner = self.lock();
		inner.capacity - inner.free.len() - inner.idle.len()
	}

	/// Prompt blocks kept for reuse, in use or not.
	pub fn kept_blocks(&self) -> usize {
		self.lock().kept.len()
	}

	/// Blocks that could still be taken: free, kept but idle, or not yet allocated.
	pub fn available_blocks(&self) -> usize {
		self.lock().available()
	}

	/// The keys of the full blocks of `tokens` read under `adapter` (its
	/// [`LoraAdapter::kv_identity`](super::LoraAdapter::kv_identity); `None` for the base model).
	pub fn prefix_keys(&self, adapter: Option<&[u8]>, tokens: &[u32]) -> Vec<PrefixKey> {
		let mut previous = 0u128;
		tokens
			.chunks_exact(BLOCK_TOKENS)
			.map(|block| {
				let [low, high] = [0, 1].map(|i| {
					let mut h = self.hashers[i].build_hasher();
					h.write_u128(previous);
					h.write_u8(u8::from(adapter.is_some()));
					h.write_usize(adapter.map_or(0, <[u8]>::len));
					h.write(adapter.unwrap_or_default());
					block.iter().for_each(|&t| h.write_u32(t));
					h.finish()
				});
				previous = u128::from(high) << 64 | u128::from(low);
				PrefixKey(previous)
			})
			.collect()
	}

	/// A cache that starts with the longest run of `keys`' blocks the pool keeps (empty when
	/// the first is not kept). Its blocks are full, so it never writes them.
	pub fn cache_with_prefix(&self, keys: &[PrefixKey]) -> KvCache {
		let mut inner = self.lock();
		let mut blocks = Vec::new();
		for key in keys {
			let Some(&block) = inner.kept.get(key) else { break };
			inner.share(block);
			blocks.push(block);
		}
		KvCache { pool: self.clone(), len: blocks.len() * BLOCK_TOKENS, blocks }
	}

	/// Keeps `cache`'s first `keys.len()` blocks, which hold those prompt blocks, for reuse
	/// (those whose key is kept already stay as they are).
	pub fn keep_prefix(&self, cache: &KvCache, keys: &[PrefixKey]) {
		debug_assert!(keys.len() * BLOCK_TOKENS <= cache.len, "only written blocks are kept");
		let mut inner = self.lock();
		for (key, &block) in keys.iter().zip(&cache.blocks) {
			if inner.key_of[block as usize].is_none() && !inner.kept.contains_key(key) {
				inner.kept.insert(*key, block);
				inner.key_of[block as usize] = Some(*key);
			}
		}
	}

	/// Layer `layer`'s key and value pools (cheap handles to the shared storage).
	pub(crate) fn layer(&self, layer: usize) -> Result<(Tensor, Tensor)> {
		match self.lock().layers.get(layer) {
			Some(kv) => Ok(kv.clone()),
			None => candle_core::bail!("the KV pool has no layer {layer} allocated"),
		}
	}
}

impl PoolInner {
	fn block_bytes(&self) -> usize {
		let s = self.shape;
		2 * s.num_layers * s.kv_heads * BLOCK_TOKENS * s.head_dim * DType::F32.size_in_bytes()
	}

	fn available(&self) -> usize {
		self.free.len() + self.idle.len() + self.max_blocks - self.capacity
	}

	/// Takes `count` blocks: free ones, then idle kept ones taken back (the least recently used
	/// first), and only then new ones, growing the pool; all or none.
	fn take(&mut self, count: usize) -> std::result::Result<Vec<u32>, KvPoolFull> {
		let available = self.available();
		if count > available {
			return Err(KvPoolFull { needed: count, free: available, max_blocks: self.max_blocks });
		}
		while self.free.len() < count {
			let Some((_, block)) = self.idle.pop_first() else { break };
			let key = self.key_of[block as usize].take().expect("an idle block is kept");
			self.kept.remove(&key);
			self.free.push(block);
		}
		if count > self.free.len() {
			let wanted = self.capacity - self.free.len() + count;
			let grown = wanted.max(FIRST_BLOCKS).max(2 * self.capacity).min(self.max_blocks);
			// An allocation failure (device memory) is reported as the pool being full: the
			// scheduler then treats it as it treats the limit.
			if let Err(e) = self.grow(grown) {
				tracing::warn!("growing the KV cache to {grown} blocks failed: {e}");
				return Err(KvPoolFull { needed: count, free: self.free.len(), max_blocks: self.capacity });
			}
		}
		let taken: Vec<u32> = (0..count).map(|_| self.free.pop().expect("enough blocks checked above")).collect();
		for &block in &taken {
			self.users[block as usize] = 1;
		}
		Ok(taken)
	}

	/// One more cache uses `block` (kept and idle until now, or in use).
	fn share(&mut self, block: u32) {
		if self.users[block as usize] == 0 {
			self.idle.remove(&self.idle_since[block as usize]);
		}
		self.users[block as usize] += 1;
	}

	/// One cache less uses each of `blocks`; those nobody uses any more are free again, or
	/// idle if kept. A sequence's later blocks go idle first, so they are taken back before
	/// the blocks of the prefix they continue.
	fn release(&mut self, blocks: impl DoubleEndedIterator<Item = u32>) {
		for block in blocks.rev() {
			let users = &mut self.users[block as usize];
			*users -= 1;
			if *users == 0 {
				if self.key_of[block as usize].is_some() {
					self.tick += 1;
					self.idle.insert(self.tick, block);
					self.idle_since[block as usize] = self.tick;
				} else {
					self.free.push(block);
				}
			}
		}
	}

	/// Reallocates every layer's pools with `capacity` blocks, keeping the blocks in use where
	/// they are (their ids stay valid).
	fn grow(&mut self, capacity: usize) -> Result<()> {
		let s = self.shape;
		let dims = (capacity, s.kv_heads, BLOCK_TOKENS, s.head_dim);
		let mut layers = Vec::with_capacity(s.num_layers);
		for l in 0..s.num_layers {
			let k = Tensor::zeros(dims, DType::F32, &self.device)?;
			let v = Tensor::zeros(dims, DType::F32, &self.device)?;
			if let Some((old_k, old_v)) = self.layers.get(l) {
				k.slice_set(old_k, 0, 0)?;
				v.slice_set(old_v, 0, 0)?;
			}
			layers.push((k, v));
		}
		self.layers = layers;
		self.free.splice(0..0, (self.capacity as u32..capacity as u32).rev());
		self.users.resize(capacity, 0);
		self.key_of.resize(capacity, None);
		self.idle_since.resize(capacity, 0);
		tracing::debug!(blocks = capacity, mib = (capacity * self.block_bytes()) >> 20, "KV cache grown");
		self.capacity = capacity;
		Ok(())
	}
}

/// One sequence's cached keys and values: a block table into a [`KvPool`]. Dropping it returns
/// its blocks to the pool.
pub struct KvCache {
	pool: KvPool,
	blocks: Vec<u32>,
	len: usize,
}

impl KvCache {
	/// Tokens already in the cache (the position of the next token).
	pub fn len(&self) -> usize {
		self.len
	}

	pub fn is_empty(&self) -> bool {
		self.len == 0
	}

	/// Whether both caches draw on the same pool.
	pub fn same_pool(&self, other: &KvCache) -> bool {
		Arc::ptr_eq(&self.pool.inner, &other.pool.inner)
	}

	/// The blocks holding positions `0..len`, in order.
	pub fn blocks(&self) -> &[u32] {
		&self.blocks
	}

	/// A cache holding the same positions, for a second answer to the same prompt: the full
	/// blocks are shared, the last one if partly filled is copied (both caches write into it).
	/// Fails when the pool has no block for that copy.
	pub fn fork(&self) -> Result<KvCache> {
		let full = self.len / BLOCK_TOKENS;
		let partial = (self.len % BLOCK_TOKENS != 0).then(|| self.blocks[full]);
		let (blocks, layers) = {
			let mut inner = self.pool.lock();
			let copy = match partial {
				Some(_) => inner.take(1).map_err(|full| candle_core::Error::Msg(full.to_string()))?,
				None => Vec::new(),
			};
			for &block in &self.blocks[..full] {
				inner.share(block);
			}
			([&self.blocks[..full], &copy[..]].concat(), inner.layers.clone())
		};
		// From here the blocks are the fork's: dropped, it gives them back.
		let forked = KvCache { pool: self.pool.clone(), blocks, len: self.len };
		if let Some(from) = partial {
			let to = forked.blocks[full] as usize;
			for (k, v) in &layers {
				for pool in [k, v] {
					pool.slice_set(&pool.narrow(0, from as usize, 1)?.copy()?, 0, to)?;
				}
			}
		}
		Ok(forked)
	}

	/// Makes room for `tokens` more positions, taking blocks from the pool if needed. Either all
	/// the blocks are taken or none.
	pub fn reserve(&mut self, tokens: usize) -> std::result::Result<(), KvPoolFull> {
		let needed = (self.len + tokens).div_ceil(BLOCK_TOKENS).saturating_sub(self.blocks.len());
		if needed > 0 {
			let taken = self.pool.lock().take(needed)?;
			self.blocks.extend(taken);
		}
		Ok(())
	}

	/// Writes `k`, `v` (`[kv_heads, n, head_dim]`) for positions `len..len + n` of `layer`. The
	/// blocks must have been reserved; [`Self::advance`] moves `len` once every layer is written.
	pub(crate) fn write(&self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
		let n = k.dim(1)?;
		if (self.len + n).div_ceil(BLOCK_TOKENS) > self.blocks.len() {
			candle_core::bail!("KV blocks for {n} tokens at position {} were not reserved", self.len);
		}
		let (pool_k, pool_v) = self.pool.layer(layer)?;
		let mut written = 0;
		while written < n {
			let position = self.len + written;
			let (block, offset) = (self.blocks[position / BLOCK_TOKENS] as usize, position % BLOCK_TOKENS);
			let run = (BLOCK_TOKENS - offset).min(n - written);
			for (pool, new) in [(&pool_k, k), (&pool_v, v)] {
				let rows = new.narrow(1, written, run)?.contiguous()?.unsqueeze(0)?;
				pool.narrow(0, block, 1)?.slice_set(&rows, 2, offset)?;
			}
			written += run;
		}
		Ok(())
	}

	/// Keys and values of positions `0..len` of `layer`, gathered from the blocks into
	/// `[kv_heads, len, head_dim]` each. `block_ids` is [`Self::blocks`] as a tensor on the pool's
	/// device (made once per step, used for every layer).
	pub(crate) fn gather(&self, layer: usize, block_ids: &Tensor, len: usize) -> Result<(Tensor, Tensor)> {
		let (pool_k, pool_v) = self.pool.layer(layer)?;
		let gather = |pool: &Tensor| -> Result<Tensor> {
			let blocks = pool.index_select(block_ids, 0)?; // [blocks, kv_heads, BLOCK_TOKENS, head_dim]
			let (count, kv_heads, _, head_dim) = blocks.dims4()?;
			blocks.transpose(0, 1)?.reshape((kv_heads, count * BLOCK_TOKENS, head_dim))?.narrow(1, 0, len)
		};
		Ok((gather(&pool_k)?, gather(&pool_v)?))
	}

	/// Layer `layer`'s whole key and value pools, for reading this cache's blocks in place.
	pub(crate) fn layer_pools(&self, layer: usize) -> Result<(Tensor, Tensor)> {
		self.pool.layer(layer)
	}

	/// The positions written since the last call count as cached.
	pub(crate) fn advance(&mut self, tokens: usize) {
		self.len += tokens;
	}
}

impl Drop for KvCache {
	fn drop(&mut self) {
		if !self.blocks.is_empty() {
			self.pool.lock().release(self.blocks.drain(..));
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn pool(max_tokens: usize) -> KvPool {
		KvPool::new(KvShape { num_layers: 2, kv_heads: 2, head_dim: 4 }, max_tokens, &Device::Cpu)
	}

	/// `[kv_heads, n, head_dim]` values that name their layer, head, position and key/value.
	fn rows(layer: usize, first: usize, n: usize, value: bool) -> Tensor {
		let data: Vec<f32> = (0..2)
			.flat_map(|h| (first..first + n).flat_map(move |t| (0..4).map(move |d| (layer * 100_000 + h * 10_000 + t * 10 + d) as f32 + if value { 0.5 } else { 0.0 })))
			.collect();
		Tensor::from_vec(data, (2, n, 4), &Device::Cpu).unwrap()
	}

	/// Writes in chunks that straddle blocks, interleaved between two sequences, read back
	/// exactly; blocks return to the pool when a cache is dropped and are reused.
	#[test]
	fn chunks_across_blocks_read_back_and_blocks_are_reused() {
		let pool = pool(1_000);
		let (mut first, mut second) = (pool.cache(), pool.cache());
		for (cache, chunks) in [(&mut first, [5usize, 20, 1, 1]), (&mut second, [16, 1, 17, 3])] {
			for n in chunks {
				cache.reserve(n).unwrap();
				for layer in 0..2 {
					cache.write(layer, &rows(layer, cache.len(), n, false), &rows(layer, cache.len(), n, true)).unwrap();
				}
				cache.advance(n);
			}
		}
		for cache in [&first, &second] {
			let ids = Tensor::new(cache.blocks(), &Device::Cpu).unwrap();
			for layer in 0..2 {
				let (k, v) = cache.gather(layer, &ids, cache.len()).unwrap();
				assert_eq!(k.to_vec3::<f32>().unwrap(), rows(layer, 0, cache.len(), false).to_vec3::<f32>().unwrap());
				assert_eq!(v.to_vec3::<f32>().unwrap(), rows(layer, 0, cache.len(), true).to_vec3::<f32>().unwrap());
			}
		}
		assert_eq!((first.blocks().len(), second.blocks().len()), (2, 3));
		assert_eq!(pool.used_blocks(), 5);
		let freed: Vec<u32> = second.blocks().to_vec();
		drop(second);
		assert_eq!(pool.used_blocks(), 2);
		let mut third = pool.cache();
		third.reserve(3 * BLOCK_TOKENS).unwrap();
		let mut reused = third.blocks().to_vec();
		reused.sort();
		let mut freed = freed;
		freed.sort();
		assert_eq!(reused, freed, "the freed blocks are taken again before the pool grows");
	}

	/// The limit is whole blocks; a reservation that does not fit takes nothing, and the pool
	/// grows (keeping what it holds) until the limit.
	#[test]
	fn the_limit_is_kept_and_growth_keeps_contents() {
		let pool = pool(100 * BLOCK_TOKENS);
		let mut early = pool.cache();
		early.reserve(3).unwrap();
		early.write(1, &rows(1, 0, 3, false), &rows(1, 0, 3, true)).unwrap();
		early.advance(3);
		assert_eq!(pool.allocated_bytes(), FIRST_BLOCKS * 2 * 2 * 2 * BLOCK_TOKENS * 4 * 4);
		let mut big = pool.cache();
		big.reserve(90 * BLOCK_TOKENS).unwrap();
		assert_eq!(pool.allocated_bytes(), 100 * 2 * 2 * 2 * BLOCK_TOKENS * 4 * 4, "grown to the limit, not past it");
		let ids = Tensor::new(early.blocks(), &Device::Cpu).unwrap();
		let (k, _) = early.gather(1, &ids, 3).unwrap();
		assert_eq!(k.to_vec3::<f32>().unwrap(), rows(1, 0, 3, false).to_vec3::<f32>().unwrap(), "kept across growth");
		let mut late = pool.cache();
		let full = late.reserve(10 * BLOCK_TOKENS).unwrap_err();
		assert_eq!(full, KvPoolFull { needed: 10, free: 9, max_blocks: 100 });
		assert!(late.blocks().is_empty(), "a failed reservation takes nothing");
		late.reserve(9 * BLOCK_TOKENS).unwrap();
		assert_eq!(pool.available_blocks(), 0);
		assert!(early.write(0, &rows(0, 3, 14, false), &rows(0, 3, 14, true)).is_err(), "writing past the reserved blocks");
	}

	fn fill(cache: &mut KvCache, n: usize, value: bool) {
		cache.reserve(n).unwrap();
		for layer in 0..2 {
			cache.write(layer, &rows(layer, cache.len(), n, value), &rows(layer, cache.len(), n, !value)).unwrap();
		}
		cache.advance(n);
	}

	fn keys(cache: &KvCache, layer: usize) -> Vec<Vec<Vec<f32>>> {
		let ids = Tensor::new(cache.blocks(), &Device::Cpu).unwrap();
		cache.gather(layer, &ids, cache.len()).unwrap().0.to_vec3::<f32>().unwrap()
	}

	/// A fork shares the full blocks and copies the partial one; each side then writes only its
	/// own blocks, and a shared block is free only once both caches are gone.
	#[test]
	fn a_fork_shares_full_blocks_and_copies_the_last() {
		let pool = pool(1_000);
		let mut parent = pool.cache();
		fill(&mut parent, 2 * BLOCK_TOKENS + 5, false);
		let mut child = parent.fork().unwrap();
		assert_eq!(child.len(), parent.len());
		assert_eq!(child.blocks()[..2], parent.blocks()[..2], "full blocks shared");
		assert_ne!(child.blocks()[2], parent.blocks()[2], "the partial block copied");
		assert_eq!(pool.used_blocks(), 4);
		assert_eq!(keys(&child, 1), keys(&parent, 1), "the copy holds the same keys");
		// The parent goes on with keys, the child with values in the key slots: neither sees the other's.
		fill(&mut parent, 3, false);
		fill(&mut child, 3, true);
		assert_eq!(keys(&parent, 0), rows(0, 0, parent.len(), false).to_vec3::<f32>().unwrap());
		let child_keys = keys(&child, 0);
		assert_eq!(child_keys[0][..2 * BLOCK_TOKENS + 5], rows(0, 0, 2 * BLOCK_TOKENS + 5, false).to_vec3::<f32>().unwrap()[0][..]);
		assert_eq!(child_keys[0][2 * BLOCK_TOKENS + 5..], rows(0, 2 * BLOCK_TOKENS + 5, 3, true).to_vec3::<f32>().unwrap()[0][..]);
		drop(parent);
		assert_eq!(pool.used_blocks(), 3, "the shared blocks stay with the child");
		assert_eq!(keys(&child, 0), child_keys);
		drop(child);
		assert_eq!(pool.used_blocks(), 0);
		// A cache ending on a block boundary forks without a copy; a full pool refuses a copy.
		let small = self::pool(3 * BLOCK_TOKENS);
		let mut whole = small.cache();
		fill(&mut whole, BLOCK_TOKENS, false);
		let twin = whole.fork().unwrap();
		assert_eq!((twin.blocks(), small.used_blocks()), (whole.blocks(), 1));
		let mut partial = small.cache();
		fill(&mut partial, 2 * BLOCK_TOKENS - 1, false);
		let refused = partial.fork().err().expect("no block for the copy");
		assert!(refused.to_string().contains("KV cache is full"), "{refused}");
		assert_eq!(small.used_blocks(), 3, "a failed fork keeps nothing");
	}

	/// A kept prompt prefix is found by a later cache under the same adapter only and shared
	/// without a copy; idle kept blocks count as available and are taken back, the last block
	/// of a prefix first, before the pool grows; a kept block in use is never taken.
	#[test]
	fn kept_prefixes_are_reused_and_taken_back_before_the_pool_grows() {
		let pool = pool(4 * BLOCK_TOKENS);
		let tokens: Vec<u32> = (0..2 * BLOCK_TOKENS as u32 + 8).collect();
		let prefix = pool.prefix_keys(None, &tokens);
		assert_eq!(prefix.len(), 2, "full blocks only");
		let mut longer = tokens.clone();
		longer.extend(100..120);
		assert_eq!(pool.prefix_keys(None, &longer)[..2], prefix[..], "a longer prompt starts with the same prefix");
		let adapter = pool.prefix_keys(Some(&[7; 36]), &tokens);
		let mut other = tokens.clone();
		other[0] = 99;
		let other = pool.prefix_keys(None, &other);
		for (i, key) in prefix.iter().enumerate() {
			assert!(adapter[i] != *key && other[i] != *key, "another adapter or first token changes every key");
		}

		let mut first = pool.cache();
		fill(&mut first, tokens.len(), false);
		pool.keep_prefix(&first, &prefix);
		assert_eq!(pool.kept_blocks(), 2);
		let second = pool.cache_with_prefix(&prefix);
		assert_eq!((second.len(), second.blocks()), (2 * BLOCK_TOKENS, &first.blocks()[..2]));
		assert_eq!(keys(&second, 1), rows(1, 0, 2 * BLOCK_TOKENS, false).to_vec3::<f32>().unwrap());
		assert_eq!(pool.used_blocks(), 3, "shared, not copied");
		assert!(pool.cache_with_prefix(&adapter).is_empty() && pool.cache_with_prefix(&other).is_empty());
		drop((first, second));
		assert_eq!((pool.used_blocks(), pool.kept_blocks(), pool.available_blocks()), (0, 2, 4));

		let reused = pool.cache_with_prefix(&prefix[..1]);
		assert_eq!(keys(&reused, 0), rows(0, 0, BLOCK_TOKENS, false).to_vec3::<f32>().unwrap(), "kept while idle");
		let mut big = pool.cache();
		let refused = big.reserve(4 * BLOCK_TOKENS).unwrap_err();
		assert_eq!((refused.needed, refused.free), (4, 3), "the kept block in use is not taken");
		drop(reused);
		big.reserve(3 * BLOCK_TOKENS).unwrap();
		assert_eq!(pool.kept_blocks(), 1, "one idle block taken back");
		assert_eq!(pool.cache_with_prefix(&prefix).len(), BLOCK_TOKENS, "the prefix's first block is the one left");
		big.reserve(4 * BLOCK_TOKENS).unwrap();
		assert_eq!((pool.kept_blocks(), pool.available_blocks()), (0, 0));

		// Below its limit the pool takes idle kept blocks back before it grows.
		let roomy = self::pool(1_000 * BLOCK_TOKENS);
		let mut kept = roomy.cache();
		fill(&mut kept, 2 * BLOCK_TOKENS, false);
		roomy.keep_prefix(&kept, &roomy.prefix_keys(None, &tokens[..2 * BLOCK_TOKENS]));
		drop(kept);
		let allocated = roomy.allocated_bytes();
		assert_eq!((allocated, roomy.kept_blocks()), (FIRST_BLOCKS * 2 * 2 * 2 * BLOCK_TOKENS * 4 * 4, 2));
		let mut filling = roomy.cache();
		filling.reserve((FIRST_BLOCKS - 1) * BLOCK_TOKENS).unwrap();
		assert_eq!((roomy.allocated_bytes(), roomy.kept_blocks()), (allocated, 1), "one kept block taken back, no growth");
		filling.reserve(FIRST_BLOCKS * BLOCK_TOKENS + 1).unwrap();
		assert_eq!(roomy.kept_blocks(), 0, "all taken back before growing");
		assert!(roomy.allocated_bytes() > allocated);
	}
}
