//! Matrix products of row-major f32 buffers, through the `gemm` crate (what candle uses on the
//! CPU), with either side read transposed in place: a backward pass needs `g · W` and `gᵀ · x`
//! as much as the forward's `x · Wᵀ`, and copying transposes would cost as much as the products.

/// A row-major matrix read as `rows × cols`, possibly the transpose of what is stored.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
	data: &'a [f32],
	rows: usize,
	cols: usize,
	/// Steps between consecutive rows and columns of the matrix as read.
	row_stride: usize,
	col_stride: usize,
}

impl<'a> Mat<'a> {
	/// `data` as the `rows × cols` matrix it stores.
	pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
		Self::strided(data, rows, cols, cols)
	}

	/// Columns `0..cols` of a matrix whose rows are `stride` apart (a head's columns of a
	/// `[tokens, heads · head_dim]` buffer, starting at `data`'s first element).
	pub fn strided(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
		assert!(fits(data.len(), rows, cols, stride), "matrix beyond its buffer");
		Self { data, rows, cols, row_stride: stride, col_stride: 1 }
	}

	/// The transpose, read in place.
	pub fn t(self) -> Self {
		Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
	}
}

/// A destination: `rows × cols` with rows `stride` apart.
pub struct Out<'a> {
	data: &'a mut [f32],
	rows: usize,
	cols: usize,
	stride: usize,
}

impl<'a> Out<'a> {
	pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
		Self::strided(data, rows, cols, cols)
	}

	pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, stride: usize) -> Self {
		// Rows that overlapped would be written by several threads at once.
		assert!(rows <= 1 || stride >= cols, "output rows overlap");
		assert!(fits(data.len(), rows, cols, stride), "output beyond its buffer");
		Self { data, rows, cols, stride }
	}
}

/// Whether `rows × cols` with rows `stride` apart lies within `len` elements (no overflow).
fn fits(len: usize, rows: usize, cols: usize, stride: usize) -> bool {
	rows == 0 || cols == 0 || (rows - 1).checked_mul(stride).and_then(|x| x.checked_add(cols)).is_some_and(|end| end <= len)
}

/// Products below this many multiply-adds run on the calling thread: splitting them costs more
/// than it saves.
const PARALLEL_WORK: usize = 1 << 18;

/// `out = scale · a · b`, or `out += scale · a · b` where `accumulate`.
pub fn matmul(out: Out, a: Mat, b: Mat, scale: f32, accumulate: bool) {
	let (m, n, k) = (a.rows, b.cols, a.cols);
	assert_eq!(b.rows, k, "inner dimensions differ");
	assert_eq!((out.rows, out.cols), (m, n), "output shape differs");
	if m == 0 || n == 0 {
		return;
	}
	if k == 0 {
		if !accumulate {
			for r in 0..m {
				out.data[r * out.stride..][..n].fill(0.0);
			}
		}
		return;
	}
	let threads = rayon::current_num_threads();
	let parallelism = match threads > 1 && m * n * k >= PARALLEL_WORK {
		true => gemm::Parallelism::Rayon(threads),
		false => gemm::Parallelism::None,
	};
	// SAFETY: every index the strides reach lies inside its slice (checked when each view was
	// made), the output does not alias the inputs (it is borrowed mutably), and gemm reads the
	// destination only when `accumulate` says it holds values.
	unsafe {
		gemm::gemm(
			m,
			n,
			k,
			out.data.as_mut_ptr(),
			1,
			out.stride as isize,
			accumulate,
			a.data.as_ptr(),
			a.col_stride as isize,
			a.row_stride as isize,
			b.data.as_ptr(),
			b.col_stride as isize,
			b.row_stride as isize,
			1.0,
			scale,
			false,
			false,
			false,
			parallelism,
		);
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Vec<f32> {
		let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
		let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
		(0..m * n).map(|x| (0..k).map(|p| at(x / n, p) * bt(p, x % n)).sum()).collect()
	}

	#[test]
	fn every_transpose_matches_the_definition() {
		let (m, n, k) = (5, 7, 3);
		let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
		let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.71).cos()).collect();
		for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
			let am = if ta { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
			let bm = if tb { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
			let mut out = vec![1.0f32; m * n];
			matmul(Out::new(&mut out, m, n), am, bm, 2.0, true);
			let want: Vec<f32> = naive(&a, &b, m, n, k, ta, tb).iter().map(|x| 1.0 + 2.0 * x).collect();
			for (g, w) in out.iter().zip(&want) {
				assert!((g - w).abs() < 1e-5, "{ta} {tb}: {g} vs {w}");
			}
		}
	}

	#[test]
	fn strided_views_read_and_write_columns() {
		// Columns 2..4 of a 3 × 6 buffer times a 2 × 2 identity, into columns 1..3 of another.
		let a: Vec<f32> = (0..18).map(|i| i as f32).collect();
		let eye = [1.0, 0.0, 0.0, 1.0];
		let mut out = vec![0.0f32; 12];
		matmul(Out::strided(&mut out[1..], 3, 2, 4), Mat::strided(&a[2..], 3, 2, 6), Mat::new(&eye, 2, 2), 1.0, false);
		assert_eq!(out, [0., 2., 3., 0., 0., 8., 9., 0., 0., 14., 15., 0.]);
	}
}
