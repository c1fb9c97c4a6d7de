//! Suffix array construction by induced sorting (SA-IS; Nong, Zhang & Chan 2009), O(n) time
//! over an integer alphabet `0..=upper`.
//!
//! A transcription of the AtCoder Library's `sa_is` (CC0), with `u32` arrays so a corpus of up
//! to `u32::MAX - 1` symbols fits in four bytes per array entry. A suffix that is a prefix of
//! another sorts first (the end of the text is smaller than every symbol). Checked against a
//! naive sort in the tests below.

/// "No suffix" in the work arrays.
const NONE: u32 = u32::MAX;

/// Below this length a comparison sort is used (simpler and as fast).
const THRESHOLD_NAIVE: usize = 40;

/// The suffix array of `s`, whose symbols are all `<= upper`. `s.len()` must be below
/// `u32::MAX`.
pub(crate) fn suffix_array(s: &[u32], upper: u32) -> Vec<u32> {
	assert!(s.len() < NONE as usize, "suffix array input too long");
	debug_assert!(s.iter().all(|&c| c <= upper));
	sa_is(s, upper as usize)
}

fn sa_naive(s: &[u32]) -> Vec<u32> {
	let mut sa: Vec<u32> = (0..s.len() as u32).collect();
	sa.sort_by(|&a, &b| s[a as usize..].cmp(&s[b as usize..]));
	sa
}

fn sa_is(s: &[u32], upper: usize) -> Vec<u32> {
	let n = s.len();
	match n {
		0 => return Vec::new(),
		1 => return vec![0],
		2 => return if s[0] < s[1] { vec![0, 1] } else { vec![1, 0] },
		_ if n < THRESHOLD_NAIVE => return sa_naive(s),
		_ => {},
	}

	// ls[i]: suffix i is S-type (smaller than suffix i + 1); the last suffix is L-type.
	let mut ls = vec![false; n];
	for i in (0..n - 1).rev() {
		ls[i] = if s[i] == s[i + 1] { ls[i + 1] } else { s[i] < s[i + 1] };
	}
	// Bucket starts: sum_l[c] = where the L-type suffixes starting with c begin, sum_s[c] =
	// where the S-type ones begin.
	let mut sum_l = vec![0u32; upper + 1];
	let mut sum_s = vec![0u32; upper + 1];
	for i in 0..n {
		if !ls[i] {
			sum_s[s[i] as usize] += 1;
		} else {
			sum_l[s[i] as usize + 1] += 1;
		}
	}
	for i in 0..=upper {
		sum_s[i] += sum_l[i];
		if i < upper {
			sum_l[i + 1] += sum_s[i];
		}
	}

	let mut sa = vec![NONE; n];
	let mut buf = vec![0u32; upper + 1];
	let mut induce = |sa: &mut [u32], lms: &[u32]| {
		sa.fill(NONE);
		buf.copy_from_slice(&sum_s);
		for &d in lms {
			if d as usize == n {
				continue;
			}
			let c = s[d as usize] as usize;
			sa[buf[c] as usize] = d;
			buf[c] += 1;
		}
		buf.copy_from_slice(&sum_l);
		let c = s[n - 1] as usize;
		sa[buf[c] as usize] = (n - 1) as u32;
		buf[c] += 1;
		for i in 0..n {
			let v = sa[i];
			if v != NONE && v >= 1 && !ls[v as usize - 1] {
				let c = s[v as usize - 1] as usize;
				sa[buf[c] as usize] = v - 1;
				buf[c] += 1;
			}
		}
		buf.copy_from_slice(&sum_l);
		for i in (0..n).rev() {
			let v = sa[i];
			if v != NONE && v >= 1 && ls[v as usize - 1] {
				let c = s[v as usize - 1] as usize + 1;
				buf[c] -= 1;
				sa[buf[c] as usize] = v - 1;
			}
		}
	};
	// `sum_l[c + 1]` / `buf[c + 1]` are only indexed for S-type suffixes, whose first symbol
	// is below `upper` (some later symbol is larger), so `upper + 1` slots suffice.

	let mut lms_map = vec![NONE; n + 1];
	let mut lms: Vec<u32> = Vec::new();
	for i in 1..n {
		if !ls[i - 1] && ls[i] {
			lms_map[i] = lms.len() as u32;
			lms.push(i as u32);
		}
	}
	let m = lms.len();

	induce(&mut sa, &lms);

	if m > 0 {
		let mut sorted_lms: Vec<u32> = Vec::with_capacity(m);
		for &v in &sa {
			if lms_map[v as usize] != NONE {
				sorted_lms.push(v);
			}
		}
		let mut rec_s = vec![0u32; m];
		let mut rec_upper = 0u32;
		rec_s[lms_map[sorted_lms[0] as usize] as usize] = 0;
		for i in 1..m {
			let mut l = sorted_lms[i - 1] as usize;
			let mut r = sorted_lms[i] as usize;
			let next = |x: usize| {
				let k = lms_map[x] as usize + 1;
				if k < m {
					lms[k] as usize
				} else {
					n
				}
			};
			let end_l = next(l);
			let end_r = next(r);
			let mut same = true;
			if end_l - l != end_r - r {
				same = false;
			} else {
				while l < end_l {
					if s[l] != s[r] {
						break;
					}
					l += 1;
					r += 1;
				}
				if l == n || s[l] != s[r] {
					same = false;
				}
			}
			if !same {
				rec_upper += 1;
			}
			rec_s[lms_map[sorted_lms[i] as usize] as usize] = rec_upper;
		}

		let rec_sa = sa_is(&rec_s, rec_upper as usize);
		for i in 0..m {
			sorted_lms[i] = lms[rec_sa[i] as usize];
		}
		induce(&mut sa, &sorted_lms);
	}
	sa
}

#[cfg(test)]
mod tests {
	use super::*;

	fn lcg(seed: &mut u64) -> u64 {
		*seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
		*seed >> 33
	}

	#[test]
	fn matches_naive_sort() {
		let mut seed = 7u64;
		for round in 0..400 {
			let n = (lcg(&mut seed) % 300) as usize;
			let upper = [1u32, 2, 3, 5, 50, 1000][round % 6];
			let s: Vec<u32> = (0..n).map(|_| (lcg(&mut seed) % (upper as u64 + 1)) as u32).collect();
			assert_eq!(suffix_array(&s, upper), sa_naive(&s), "round {round}: {s:?}");
		}
	}

	#[test]
	fn repetitive_inputs() {
		for n in [0usize, 1, 2, 3, 39, 40, 41, 100, 1000] {
			let same = vec![3u32; n];
			assert_eq!(suffix_array(&same, 3), sa_naive(&same));
			let periodic: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
			assert_eq!(suffix_array(&periodic, 2), sa_naive(&periodic));
			let periodic: Vec<u32> = (0..n).map(|i| if i % 7 == 6 { 9 } else { (i % 2) as u32 }).collect();
			assert_eq!(suffix_array(&periodic, 9), sa_naive(&periodic));
		}
	}
}
