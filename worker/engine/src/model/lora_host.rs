//! An adapter's form in host memory, for the host tier and for copies onto a device: every
//! matrix packed into one buffer, grouped by float type, page-locked (pinned) when the device is
//! a GPU. A copy onto the GPU is then one DMA read per float type straight from that buffer, on
//! the upload stream while the compute stream decodes: no staging copy on the host and no launch
//! per matrix. On the device each matrix is a view into its type's one allocation.

use std::ops::Range;

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};

use super::{LoraAdapter, LoraWeights};

/// Where one matrix lies in the packed buffer.
#[derive(Clone, Debug)]
struct PackedMatrix {
	/// Elements from the start of its type's region.
	start: usize,
	dims: (usize, usize),
}

#[derive(Clone, Debug)]
struct PackedPair {
	a_t: PackedMatrix,
	b_t: PackedMatrix,
	dtype: DType,
	scale: f32,
}

/// The bytes of all matrices of one float type.
#[derive(Clone, Debug)]
pub(super) struct Region {
	pub dtype: DType,
	pub bytes: Range<usize>,
}

impl Region {
	pub fn elements(&self) -> usize {
		self.bytes.len() / self.dtype.size_in_bytes()
	}
}

/// The packed buffer: pageable, or pinned for copies onto a GPU.
enum HostBytes {
	Pageable(Vec<u8>),
	#[cfg(feature = "cuda")]
	Pinned(super::lora_cuda::Pinned),
}

/// An adapter's weights packed in host memory.
pub struct HostAdapter {
	pub hash: [u8; 32],
	pub rank: usize,
	/// The adapter's bytes on a device, as [`LoraAdapter::resident_bytes`]; the host holds the same.
	pub resident_bytes: usize,
	layers: Vec<[Option<PackedPair>; 7]>,
	regions: Vec<Region>,
	bytes: HostBytes,
}

/// The float types adapter weights come in, in the buffer's order.
const TYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

impl HostAdapter {
	/// Packs `adapter`'s weights (on the CPU) to be kept for copies onto `device`: pinned when
	/// `device` is a GPU (pageable if the memory cannot be pinned).
	pub fn pack(adapter: &LoraAdapter, device: &Device) -> Result<Self> {
		Self::pack_into(adapter, |len| HostBytes::allocate(len, device))
	}

	/// Packs `adapter`'s weights in pageable memory: for one copy onto a device, where pinning
	/// (slower than the copy itself) does not pay.
	pub fn pack_once(adapter: &LoraAdapter) -> Result<Self> {
		Self::pack_into(adapter, |len| Ok(HostBytes::Pageable(vec![0; len])))
	}

	fn pack_into(adapter: &LoraAdapter, allocate: impl FnOnce(usize) -> Result<HostBytes>) -> Result<Self> {
		if let Some(w) = adapter.layers.iter().flatten().flatten().find(|w| !TYPES.contains(&w.a_t.dtype())) {
			candle_core::bail!("LoRA weights must be f32, f16 or bf16, not {:?}", w.a_t.dtype());
		}
		let mut layers: Vec<[Option<PackedPair>; 7]> = Vec::with_capacity(adapter.layers.len());
		let mut regions = Vec::new();
		let mut total = 0;
		for dtype in TYPES {
			let region_start = total;
			let mut elements = 0;
			for (l, layer) in adapter.layers.iter().enumerate() {
				if layers.len() <= l {
					layers.push(Default::default());
				}
				for (slot, pair) in layer.iter().enumerate() {
					let Some(w) = pair.as_ref().filter(|w| w.a_t.dtype() == dtype) else { continue };
					if w.b_t.dtype() != dtype {
						candle_core::bail!("a LoRA pair's two matrices differ in type");
					}
					let mut place = |t: &Tensor| -> Result<PackedMatrix> {
						let matrix = PackedMatrix { start: elements, dims: t.dims2()? };
						elements += t.elem_count();
						Ok(matrix)
					};
					let (a_t, b_t) = (place(&w.a_t)?, place(&w.b_t)?);
					layers[l][slot] = Some(PackedPair { a_t, b_t, dtype, scale: w.scale });
				}
			}
			if elements > 0 {
				total += elements * dtype.size_in_bytes();
				regions.push(Region { dtype, bytes: region_start..total });
			}
		}
		let mut bytes = allocate(total)?;
		let buffer = bytes.as_mut_slice()?;
		for (layer, packed) in adapter.layers.iter().zip(&layers) {
			for (w, p) in layer.iter().zip(packed).filter_map(|(w, p)| w.as_ref().zip(p.as_ref())) {
				let region = regions.iter().find(|r| r.dtype == p.dtype).expect("every type placed has a region");
				for (t, m) in [(&w.a_t, &p.a_t), (&w.b_t, &p.b_t)] {
					let start = region.bytes.start + m.start * p.dtype.size_in_bytes();
					write_bytes(t, &mut buffer[start..start + t.elem_count() * p.dtype.size_in_bytes()])?;
				}
			}
		}
		Ok(Self { hash: adapter.hash, rank: adapter.rank, resident_bytes: adapter.resident_bytes, layers, regions, bytes })
	}

	/// The adapter with its weights on `device`: one allocation and one copy per float type,
	/// each matrix a view into it.
	pub fn to_device(&self, device: &Device) -> Result<LoraAdapter> {
		let on_device: Vec<Tensor> = match (&self.bytes, device) {
			#[cfg(feature = "cuda")]
			(HostBytes::Pinned(pinned), Device::Cuda(_)) => super::lora_cuda::upload_regions(pinned, &self.regions, device)?,
			(bytes, _) => {
				let buffer = bytes.as_slice()?;
				self.regions
					.iter()
					.map(|r| Tensor::from_raw_buffer(&buffer[r.bytes.clone()], r.dtype, &[r.elements()], &Device::Cpu)?.to_device(device))
					.collect::<Result<_>>()?
			},
		};
		let view = |region: &Tensor, m: &PackedMatrix| region.narrow(0, m.start, m.dims.0 * m.dims.1)?.reshape(m.dims);
		let layers = self
			.layers
			.iter()
			.map(|layer| {
				let mut weights: [Option<LoraWeights>; 7] = Default::default();
				for (slot, p) in weights.iter_mut().zip(layer) {
					let Some(p) = p else { continue };
					let region = &on_device[self.regions.iter().position(|r| r.dtype == p.dtype).expect("placed")];
					*slot = Some(LoraWeights { a_t: view(region, &p.a_t)?, b_t: view(region, &p.b_t)?, scale: p.scale });
				}
				Ok(weights)
			})
			.collect::<Result<Vec<_>>>()?;
		LoraAdapter::new(self.hash, self.rank, layers, self.resident_bytes, device)
	}

	/// Whether the buffer is page-locked.
	pub fn is_pinned(&self) -> bool {
		!matches!(self.bytes, HostBytes::Pageable(_))
	}
}

impl HostBytes {
	fn allocate(len: usize, device: &Device) -> Result<Self> {
		match device {
			#[cfg(feature = "cuda")]
			Device::Cuda(_) => match super::lora_cuda::Pinned::allocate(len, device) {
				Ok(pinned) => Ok(Self::Pinned(pinned)),
				Err(e) => {
					tracing::warn!(bytes = len, error = %e, "cannot pin host memory for an adapter; keeping it pageable");
					Ok(Self::Pageable(vec![0; len]))
				},
			},
			_ => Ok(Self::Pageable(vec![0; len])),
		}
	}

	fn as_slice(&self) -> Result<&[u8]> {
		match self {
			Self::Pageable(v) => Ok(v),
			#[cfg(feature = "cuda")]
			Self::Pinned(p) => p.as_slice(),
		}
	}

	fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
		match self {
			Self::Pageable(v) => Ok(v),
			#[cfg(feature = "cuda")]
			Self::Pinned(p) => p.as_mut_slice(),
		}
	}
}

/// Writes a tensor's elements into `out` (its exact size) in native byte order, as
/// `Tensor::from_raw_buffer` and the GPU read them.
fn write_bytes(t: &Tensor, out: &mut [u8]) -> Result<()> {
	fn put<T: Copy, const N: usize>(values: &[T], out: &mut [u8], bytes: fn(T) -> [u8; N]) {
		for (chunk, &v) in out.chunks_exact_mut(N).zip(values) {
			chunk.copy_from_slice(&bytes(v));
		}
	}
	let t = t.to_device(&Device::Cpu)?.contiguous()?;
	let (storage, layout) = t.storage_and_layout();
	let range = layout.start_offset()..layout.start_offset() + t.elem_count();
	match &*storage {
		Storage::Cpu(CpuStorage::F32(v)) => put(&v[range], out, f32::to_ne_bytes),
		Storage::Cpu(CpuStorage::F16(v)) => put(&v[range], out, half::f16::to_ne_bytes),
		Storage::Cpu(CpuStorage::BF16(v)) => put(&v[range], out, half::bf16::to_ne_bytes),
		_ => candle_core::bail!("adapter weights are f32, f16 or bf16"),
	}
	Ok(())
}

#[cfg(test)]
mod tests {
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;
	use crate::model::Projection;

	/// An adapter over two layers with pairs in all three float types, empty slots and a
	/// layer without pairs, its weights on `device`.
	fn mixed_adapter(device: &Device) -> LoraAdapter {
		let mut rng = StdRng::seed_from_u64(5);
		let mut matrix = |rows: usize, cols: usize, dtype: DType| {
			let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
			Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
		};
		let mut pair = |in_features: usize, out_features: usize, rank: usize, dtype: DType, scale: f32| LoraWeights {
			a_t: matrix(in_features, rank, dtype),
			b_t: matrix(rank, out_features, dtype),
			scale,
		};
		let mut layers: Vec<[Option<LoraWeights>; 7]> = (0..3).map(|_| Default::default()).collect();
		layers[0][Projection::Q.index()] = Some(pair(48, 48, 8, DType::BF16, 2.0));
		layers[0][Projection::Down.index()] = Some(pair(96, 48, 8, DType::F32, 0.5));
		layers[2][Projection::V.index()] = Some(pair(48, 16, 4, DType::F16, 1.5));
		layers[2][Projection::Q.index()] = Some(pair(48, 48, 8, DType::BF16, 0.25));
		LoraAdapter::new([9; 32], 8, layers, 12_345, device).unwrap()
	}

	/// Packing and copying back onto a device keeps every matrix, scale and empty slot: on the
	/// CPU through a pageable buffer, on a GPU through a pinned one and the upload stream.
	fn packed_adapters_come_back_whole(device: &Device) {
		let original = mixed_adapter(&Device::Cpu);
		let packed = HostAdapter::pack(&original, device).unwrap();
		assert_eq!(packed.is_pinned(), device.is_cuda());
		assert_eq!(packed.regions.len(), 3, "one region per float type");
		let copy = packed.to_device(device).unwrap();
		assert_eq!((copy.hash, copy.rank, copy.resident_bytes, copy.layers.len()), ([9; 32], 8, 12_345, 3));
		let host = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
		for (l, (a, b)) in original.layers.iter().zip(&copy.layers).enumerate() {
			for (slot, (a, b)) in a.iter().zip(b).enumerate() {
				match (a, b) {
					(None, None) => {},
					(Some(a), Some(b)) => {
						assert_eq!((a.a_t.dtype(), a.a_t.dims(), a.b_t.dims(), a.scale), (b.a_t.dtype(), b.a_t.dims(), b.b_t.dims(), b.scale));
						assert_eq!(host(&a.a_t), host(&b.a_t), "layer {l} slot {slot}: A^T");
						assert_eq!(host(&a.b_t), host(&b.b_t), "layer {l} slot {slot}: B^T");
					},
					_ => panic!("layer {l} slot {slot}: a pair appeared or vanished"),
				}
			}
		}
		// The copy is usable as any adapter: the same delta as the original.
		let x = Tensor::ones((2, 48), DType::F32, &Device::Cpu).unwrap();
		let w = |a: &LoraAdapter| a.weights(2, Projection::V).unwrap().clone();
		let delta = |w: LoraWeights| host(&w.delta(&x.to_device(w.a_t.device()).unwrap()).unwrap());
		let (want, got) = (delta(w(&original)), delta(w(&copy)));
		assert!(want.iter().zip(&got).all(|(a, b)| (a - b).abs() <= 1e-4 * a.abs().max(1.0)), "{want:?} vs {got:?}");
	}

	crate::device_tests!(packed_adapters_come_back_whole);

	/// A pair whose two matrices differ in type is refused, not packed into the wrong region.
	#[test]
	fn a_pair_of_two_types_is_refused() {
		let mut adapter = mixed_adapter(&Device::Cpu);
		let pair = adapter.layers[0][Projection::Q.index()].as_mut().unwrap();
		pair.b_t = pair.b_t.to_dtype(DType::F32).unwrap();
		let err = HostAdapter::pack(&adapter, &Device::Cpu).err().expect("refused");
		assert!(err.to_string().contains("differ in type"), "{err}");
	}
}
