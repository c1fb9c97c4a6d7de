//! Batched multi-adapter LoRA on CUDA: the launches of kernels/lora.cu (BGMV, as in Punica and
//! S-LoRA). A decode batch whose rows use different adapters, ranks and weight types adds all
//! their deltas for one projection in one shrink and one expand launch. Also the pinned host
//! memory of packed adapters and their copies onto the GPU, on a stream of their own.

use std::sync::{Arc, Mutex};

use candle_core::{
	backend::BackendStorage,
	cuda_backend::{
		cudarc::driver::{result, CudaStream, DevicePtr, DevicePtrMut, PinnedHostSlice, PushKernelArg},
		WrapErr,
	},
	CpuStorage, CudaStorage, DType, Device, DeviceLocation, InplaceOp1, InplaceOp3, Layout, Result, Storage, Tensor,
};

use super::{kernels, lora::BATCHED_MAX_RANK as MAX_RANK, lora_host::Region, LoraWeights};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lora.ptx"));
const MODULE: &str = "openledger_lora";

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

/// Uploads an adapter's pair table (see [`super::lora::pair_table`]) and returns it with its
/// device address.
pub fn pair_table(layers: &[[Option<LoraWeights>; 7]], device: &Device) -> Result<(Tensor, u64)> {
	let words = super::lora::pair_table(layers, address)?;
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
		// Safety: the arguments match `lora_shrink`'s parameters; every row's pair table was
		// built by `pair_table` and lives as long as its adapter, which the batch holds.
		unsafe { launch.launch(kernels::lora_shrink(rows).into()) }.w()?;

		let y = y.as_cuda_slice_mut::<f32>()?;
		let mut y = y.slice_mut(y_layout.start_offset()..);
		let expand = device.get_or_load_custom_func("lora_expand", MODULE, PTX)?;
		let mut launch = expand.builder();
		launch.arg(&u);
		launch.arg(&mut y);
		launch.arg(&row_pairs);
		launch.arg(&self.pair_index);
		launch.arg(&out_features_arg);
		// Safety: as above, for `lora_expand`.
		unsafe { launch.launch(kernels::lora_expand(rows, out_features).into()) }.w()?;
		Ok(())
	}
}

/// Page-locked host memory for an adapter's packed weights (see `lora_host`): copies from it to
/// the GPU are DMA reads that run asynchronously on the upload stream.
pub struct Pinned(PinnedHostSlice<u8>);

impl Pinned {
	pub fn allocate(len: usize, device: &Device) -> Result<Self> {
		let Device::Cuda(cuda) = device else { candle_core::bail!("pinned memory is for CUDA devices") };
		// Safety: `HostAdapter::pack` writes every byte before any is read or copied.
		// Write-combined (cudarc's default): the host only writes it, once, in order.
		let slice = unsafe { cuda.cuda_stream().context().alloc_pinned::<u8>(len.max(1)) }.w()?;
		Ok(Self(slice))
	}

	pub fn as_slice(&self) -> Result<&[u8]> {
		self.0.as_slice().w()
	}

	pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
		self.0.as_mut_slice().w()
	}
}

/// Per GPU, a stream for adapter uploads, apart from candle's compute streams so the copies
/// overlap decoding.
static UPLOAD_STREAMS: Mutex<Vec<(DeviceLocation, Arc<CudaStream>)>> = Mutex::new(Vec::new());

/// Copies each region of `pinned` into a new 1-D tensor on `device`, on the GPU's upload stream,
/// and waits for the copies (the calling thread waits, not the compute stream): the LoRA kernels
/// read the weights through raw addresses, which stream-order tracking cannot see, so they must
/// be complete before the adapter is used.
pub fn upload_regions(pinned: &Pinned, regions: &[Region], device: &Device) -> Result<Vec<Tensor>> {
	let Device::Cuda(cuda) = device else { candle_core::bail!("uploads are for CUDA devices") };
	let stream = {
		let mut streams = UPLOAD_STREAMS.lock().unwrap_or_else(|p| p.into_inner());
		match streams.iter().find(|(location, _)| *location == device.location()) {
			Some((_, stream)) => stream.clone(),
			None => {
				let stream = cuda.cuda_stream().context().new_stream().w()?;
				streams.push((device.location(), stream.clone()));
				stream
			},
		}
	};
	let source = pinned.as_slice()?;
	let queue = || -> Result<Vec<Tensor>> {
		let mut uploaded = Vec::with_capacity(regions.len());
		for region in regions {
			let on_device = Tensor::zeros(region.elements(), region.dtype, device)?;
			on_device.inplace_op1(&CopyIn { source: &source[region.bytes.clone()], stream: &stream })?;
			uploaded.push(on_device);
		}
		Ok(uploaded)
	};
	let uploaded = queue();
	// Also after a failure: copies already queued read `pinned`, which the caller may free next.
	stream.synchronize().w()?;
	uploaded
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
		// outlives the copy (the caller waits for the stream before returning).
		unsafe { result::memcpy_htod_async(address + offset_bytes as u64, self.source, stream.cu_stream()) }.w()?;
		Ok(())
	}
}
