//! Batched multi-adapter LoRA on CUDA: the launches of kernels/lora.cu (BGMV, as in Punica and
//! S-LoRA). A decode batch whose rows use different adapters, ranks and weight types adds all
//! their deltas for one projection in one shrink and one expand launch. Also the copies of
//! adapters onto the GPU, on a stream of their own.

use std::sync::{Arc, Mutex};

use candle_core::{
	backend::BackendStorage,
	cuda_backend::{
		cudarc::driver::{result, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PinnedHostSlice, PushKernelArg},
		WrapErr,
	},
	CpuStorage, CudaStorage, DType, Device, DeviceLocation, InplaceOp1, InplaceOp3, Layout, Result, Storage, Tensor,
};

use super::{lora::BATCHED_MAX_RANK as MAX_RANK, LoraWeights};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lora.ptx"));
const MODULE: &str = "openledger_lora";

const SHRINK_THREADS: u32 = 512;
const EXPAND_THREADS: u32 = 256;

/// The device address of a contiguous tensor's first element.
fn address(t: &Tensor) -> Result<u64> {
	if !t.is_contiguous() {
		candle_core::bail!("a tensor passed to the LoRA kernels must be contiguous");
	}
	let (storage, layout) = t.storage_and_layout();
	let Storage::Cuda(s) = &*storage else { candle_core::bail!("a tensor passed to the LoRA kernels is not on CUDA") };
	let stream = s.device().cuda_stream();
	let base = match t.dtype() {
		DType::F32 => s.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
		DType::F16 => s.as_cuda_slice::<half::f16>()?.device_ptr(&stream).0,
		DType::BF16 => s.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0,
		DType::I64 => s.as_cuda_slice::<i64>()?.device_ptr(&stream).0,
		other => candle_core::bail!("the LoRA kernels do not take {other:?} tensors"),
	};
	Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// The kernels' code for a weight type.
fn dtype_code(dtype: DType) -> Result<i64> {
	match dtype {
		DType::F32 => Ok(0),
		DType::F16 => Ok(1),
		DType::BF16 => Ok(2),
		other => candle_core::bail!("LoRA weights must be f32, f16 or bf16, not {other:?}"),
	}
}

/// Uploads an adapter's pair table (kernels/lora.cu: a header of four 64-bit words, the first
/// the number of pairs, then a `struct LoraPair` of four words per layer and projection) and
/// returns it with its device address.
pub fn pair_table(layers: &[[Option<LoraWeights>; 7]], device: &Device) -> Result<(Tensor, u64)> {
	let mut words: Vec<i64> = Vec::with_capacity((layers.len() * 7 + 1) * 4);
	words.extend([(layers.len() * 7) as i64, 0, 0, 0]);
	for pair in layers.iter().flatten() {
		let Some(w) = pair else {
			words.extend([0; 4]);
			continue;
		};
		let rank = w.a_t.dim(1)?;
		if rank > MAX_RANK {
			candle_core::bail!("rank {rank} is above the CUDA LoRA kernels' {MAX_RANK}");
		}
		if w.a_t.dtype() != w.b_t.dtype() {
			candle_core::bail!("a LoRA pair's two matrices differ in type");
		}
		let rank_and_type = rank as i64 | dtype_code(w.a_t.dtype())? << 32;
		words.extend([address(&w.a_t)? as i64, address(&w.b_t)? as i64, rank_and_type, i64::from(w.scale.to_bits())]);
	}
	let table = Tensor::new(words.as_slice(), device)?;
	let address = address(&table)?;
	Ok((table, address))
}

/// Adds to `y` (`[rows, out]`, f32, contiguous) the delta of pair `pair_index` (layer · 7 +
/// projection) of each row's adapter, for inputs `x` (`[rows, in]`, f32). `row_pairs` holds each
/// row's pair-table address (I64, 0: no adapter).
pub fn add_deltas(y: &Tensor, x: &Tensor, row_pairs: &Tensor, pair_index: usize) -> Result<()> {
	y.inplace_op3(x, row_pairs, &BatchedLora { pair_index: pair_index as i32 })
}

struct BatchedLora {
	pair_index: i32,
}

impl InplaceOp3 for BatchedLora {
	fn name(&self) -> &'static str {
		"batched-lora"
	}

	fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
		candle_core::bail!("batched-lora is the CUDA path; the CPU adds deltas row by row")
	}

	fn cuda_fwd(
		&self,
		y: &mut CudaStorage,
		y_layout: &Layout,
		x: &CudaStorage,
		x_layout: &Layout,
		row_pairs: &CudaStorage,
		pairs_layout: &Layout,
	) -> Result<()> {
		let (rows, out_features) = y_layout.shape().dims2()?;
		let (x_rows, in_features) = x_layout.shape().dims2()?;
		if x_rows != rows || pairs_layout.shape().elem_count() != rows {
			candle_core::bail!("batched-lora: {rows} output rows, {x_rows} input rows, {} adapters", pairs_layout.shape().elem_count());
		}
		if !y_layout.is_contiguous() || !x_layout.is_contiguous() || !pairs_layout.is_contiguous() {
			candle_core::bail!("batched-lora wants contiguous tensors");
		}
		let device = y.device().clone();
		let x = x.as_cuda_slice::<f32>()?.slice(x_layout.start_offset()..);
		let row_pairs = row_pairs.as_cuda_slice::<i64>()?.slice(pairs_layout.start_offset()..);
		let u = device.alloc_zeros::<f32>(rows * MAX_RANK)?;
		let (in_features, out_features_arg) = (in_features as i32, out_features as i32);

		let shrink = device.get_or_load_custom_func("lora_shrink", MODULE, PTX)?;
		let mut launch = shrink.builder();
		launch.arg(&x);
		launch.arg(&u);
		launch.arg(&row_pairs);
		launch.arg(&self.pair_index);
		launch.arg(&in_features);
		let grid = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (SHRINK_THREADS, 1, 1), shared_mem_bytes: 0 };
		// Safety: the arguments match `lora_shrink`'s parameters; every row's pair table was
		// built by `pair_table` and lives as long as its adapter, which the batch holds.
		unsafe { launch.launch(grid) }.w()?;

		let y = y.as_cuda_slice_mut::<f32>()?;
		let mut y = y.slice_mut(y_layout.start_offset()..);
		let expand = device.get_or_load_custom_func("lora_expand", MODULE, PTX)?;
		let mut launch = expand.builder();
		launch.arg(&u);
		launch.arg(&mut y);
		launch.arg(&row_pairs);
		launch.arg(&self.pair_index);
		launch.arg(&out_features_arg);
		let blocks = (out_features as u32).div_ceil(EXPAND_THREADS);
		let grid = LaunchConfig { grid_dim: (rows as u32, blocks, 1), block_dim: (EXPAND_THREADS, 1, 1), shared_mem_bytes: 0 };
		// Safety: as above, for `lora_expand`.
		unsafe { launch.launch(grid) }.w()?;
		Ok(())
	}
}

/// Per GPU: a stream for adapter uploads, apart from candle's compute stream so the copies
/// overlap decoding, and a pinned (page-locked) staging buffer the copies read from, grown to
/// the largest adapter seen. One upload at a time per GPU.
struct Uploader {
	location: DeviceLocation,
	stream: Arc<CudaStream>,
	staging: Option<PinnedHostSlice<u8>>,
}

static UPLOADERS: Mutex<Vec<Uploader>> = Mutex::new(Vec::new());

/// Copies host tensors to `device` on its upload stream and waits for the copies (the calling
/// thread waits, not the compute stream): the LoRA kernels read the weights through raw
/// addresses, which stream-order tracking cannot see, so they must be complete before the
/// adapter is used.
pub fn upload_all(tensors: &[&Tensor], device: &Device) -> Result<Vec<Tensor>> {
	let Device::Cuda(cuda) = device else { candle_core::bail!("upload_all is for CUDA devices") };
	let mut uploaders = UPLOADERS.lock().unwrap_or_else(|p| p.into_inner());
	let index = match uploaders.iter().position(|u| u.location == device.location()) {
		Some(i) => i,
		None => {
			let stream = cuda.cuda_stream().context().new_stream().w()?;
			uploaders.push(Uploader { location: device.location(), stream, staging: None });
			uploaders.len() - 1
		},
	};
	let uploader = &mut uploaders[index];
	let hosts: Vec<Tensor> = tensors.iter().map(|t| t.to_device(&Device::Cpu)?.contiguous()).collect::<Result<_>>()?;
	let total: usize = hosts.iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
	if uploader.staging.as_ref().is_none_or(|s| s.len() < total) {
		// Safety: the buffer is written below before any of it is copied.
		let staging = unsafe { uploader.stream.context().alloc_pinned::<u8>(total.next_power_of_two()) }.w()?;
		uploader.staging = Some(staging);
	}
	let staging = uploader.staging.as_mut().expect("allocated above").as_mut_slice().w()?;
	let mut offset = 0;
	let mut uploaded = Vec::with_capacity(hosts.len());
	for host in &hosts {
		let len = host.elem_count() * host.dtype().size_in_bytes();
		let source = &mut staging[offset..offset + len];
		write_bytes(host, source)?;
		let on_device = Tensor::zeros(host.shape(), host.dtype(), device)?;
		on_device.inplace_op1(&CopyIn { source, stream: &uploader.stream })?;
		offset += len;
		uploaded.push(on_device);
	}
	uploader.stream.synchronize().w()?;
	Ok(uploaded)
}

/// Writes a contiguous CPU tensor's elements into `out` (its exact size), little-endian, straight
/// from the tensor's storage.
fn write_bytes(t: &Tensor, out: &mut [u8]) -> Result<()> {
	fn put<T: Copy, const N: usize>(values: &[T], out: &mut [u8], bytes: fn(T) -> [u8; N]) {
		for (chunk, &v) in out.chunks_exact_mut(N).zip(values) {
			chunk.copy_from_slice(&bytes(v));
		}
	}
	let (storage, layout) = t.storage_and_layout();
	let range = layout.start_offset()..layout.start_offset() + t.elem_count();
	match &*storage {
		Storage::Cpu(CpuStorage::F32(v)) => put(&v[range], out, f32::to_le_bytes),
		Storage::Cpu(CpuStorage::F16(v)) => put(&v[range], out, half::f16::to_le_bytes),
		Storage::Cpu(CpuStorage::BF16(v)) => put(&v[range], out, half::bf16::to_le_bytes),
		_ => candle_core::bail!("adapter weights are f32, f16 or bf16 host tensors"),
	}
	Ok(())
}

/// Queues the copy of `source` (pinned host memory) into a tensor's storage on `stream`.
struct CopyIn<'a> {
	source: &'a [u8],
	stream: &'a Arc<CudaStream>,
}

impl InplaceOp1 for CopyIn<'_> {
	fn name(&self) -> &'static str {
		"adapter-upload"
	}

	fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
		candle_core::bail!("adapter-upload copies to a GPU")
	}

	fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> Result<()> {
		let offset_bytes = layout.start_offset() * storage.dtype().size_in_bytes();
		let stream = self.stream;
		let (address, _written) = match storage.dtype() {
			DType::F32 => storage.as_cuda_slice_mut::<f32>()?.device_ptr_mut(stream),
			DType::F16 => storage.as_cuda_slice_mut::<half::f16>()?.device_ptr_mut(stream),
			DType::BF16 => storage.as_cuda_slice_mut::<half::bf16>()?.device_ptr_mut(stream),
			other => candle_core::bail!("adapter weights are f32, f16 or bf16, not {other:?}"),
		};
		// Safety: the tensor was allocated for exactly these bytes; the source is pinned and
		// outlives the copy (the caller waits for the stream before reusing it).
		unsafe { result::memcpy_htod_async(address + offset_bytes as u64, self.source, stream.cu_stream()) }.w()?;
		Ok(())
	}
}
