//! The subset of `wasm-opt`'s API that `substrate-wasm-builder` calls, without Binaryen.
//!
//! The builder asks for optimization level 0 with two passes: strip DWARF, and lower
//! sign-extension operators to WebAssembly 1.0. Stripping is done here by copying every section
//! but the `.debug_*` custom ones. Lowering is not: the runtime is built for `wasm32v1-none`,
//! which never emits those operators, and [`OptimizationOptions::run`] validates the module
//! against the 1.0 feature set, so a module that would have needed lowering is refused with the
//! validator's message rather than passed on.

use std::{fmt, fs, io, path::Path};

use wasmparser::{Validator, WasmFeatures};

/// A pass the builder asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
	/// Removes the DWARF debug sections (custom sections named `.debug_*`).
	StripDwarf,
	/// Binaryen rewrites sign-extension operators into WebAssembly 1.0 code; here the module must
	/// not contain any (it is validated without the sign-extension feature).
	SignextLowering,
}

/// What `run` will do to a module.
#[derive(Clone, Debug)]
pub struct OptimizationOptions {
	passes: Vec<Pass>,
	mvp_features_only: bool,
	debug_info: bool,
}

/// Why `run` failed.
#[derive(Debug)]
pub enum OptimizationError {
	Read { path: String, error: io::Error },
	Write { path: String, error: io::Error },
	/// The module is not valid WebAssembly, or uses a feature the options exclude.
	Invalid { path: String, reason: String },
}

impl fmt::Display for OptimizationError {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		match self {
			Self::Read { path, error } => write!(f, "cannot read {path}: {error}"),
			Self::Write { path, error } => write!(f, "cannot write {path}: {error}"),
			Self::Invalid { path, reason } => write!(
				f,
				"{path} is not a WebAssembly 1.0 module ({reason}); build the runtime for \
				 wasm32v1-none (rustup target add wasm32v1-none)"
			),
		}
	}
}

impl std::error::Error for OptimizationError {}

impl OptimizationOptions {
	/// No optimization: only the passes added with [`Self::add_pass`] run.
	pub fn new_opt_level_0() -> Self {
		Self { passes: Vec::new(), mvp_features_only: false, debug_info: false }
	}

	/// Accept WebAssembly 1.0 features only.
	pub fn mvp_features_only(&mut self) -> &mut Self {
		self.mvp_features_only = true;
		self
	}

	/// Keep the `name` section (function names for backtraces); DWARF is only removed by
	/// [`Pass::StripDwarf`].
	pub fn debug_info(&mut self, value: bool) -> &mut Self {
		self.debug_info = value;
		self
	}

	pub fn add_pass(&mut self, pass: Pass) -> &mut Self {
		self.passes.push(pass);
		self
	}

	/// Validates `infile` and writes it, less the sections the options drop, to `outfile` (which
	/// may be the same file).
	pub fn run(
		&self,
		infile: impl AsRef<Path>,
		outfile: impl AsRef<Path>,
	) -> Result<(), OptimizationError> {
		let (infile, outfile) = (infile.as_ref(), outfile.as_ref());
		let module = fs::read(infile)
			.map_err(|error| OptimizationError::Read { path: infile.display().to_string(), error })?;
		let output = self.apply(&module).map_err(|reason| OptimizationError::Invalid {
			path: infile.display().to_string(),
			reason,
		})?;
		fs::write(outfile, output)
			.map_err(|error| OptimizationError::Write { path: outfile.display().to_string(), error })
	}

	fn features(&self) -> WasmFeatures {
		let mut features =
			if self.mvp_features_only { WasmFeatures::WASM1 } else { WasmFeatures::default() };
		if self.passes.contains(&Pass::SignextLowering) {
			features.remove(WasmFeatures::SIGN_EXTENSION);
		}
		features
	}

	fn apply(&self, module: &[u8]) -> Result<Vec<u8>, String> {
		Validator::new_with_features(self.features())
			.validate_all(module)
			.map_err(|e| e.to_string())?;
		let strip_dwarf = self.passes.contains(&Pass::StripDwarf);
		let mut output = Vec::with_capacity(module.len());
		output.extend_from_slice(&module[..HEADER_LEN]);
		for section in sections(module)? {
			let drop = match section.custom_name {
				Some(name) if strip_dwarf && name.starts_with(b".debug_") => true,
				Some(b"name") => !self.debug_info,
				_ => false,
			};
			if !drop {
				output.extend_from_slice(section.bytes);
			}
		}
		Ok(output)
	}
}

/// The magic number and the version.
const HEADER_LEN: usize = 8;

struct Section<'a> {
	/// The whole section: id, size and contents.
	bytes: &'a [u8],
	/// A custom section's name.
	custom_name: Option<&'a [u8]>,
}

/// Splits a module (already validated) into its sections, as they are encoded.
fn sections(module: &[u8]) -> Result<Vec<Section<'_>>, String> {
	let mut sections = Vec::new();
	let mut at = HEADER_LEN;
	while at < module.len() {
		let start = at;
		let id = module[at];
		at += 1;
		let size = read_u32(module, &mut at)? as usize;
		let contents = at;
		let end = contents.checked_add(size).filter(|&end| end <= module.len());
		let end = end.ok_or_else(|| format!("section at byte {start} runs past the end"))?;
		let custom_name = if id == 0 {
			let len = read_u32(module, &mut at)? as usize;
			Some(module.get(at..at + len).ok_or("custom section name runs past the end")?)
		} else {
			None
		};
		sections.push(Section { bytes: &module[start..end], custom_name });
		at = end;
	}
	Ok(sections)
}

/// Reads an unsigned LEB128 number.
fn read_u32(bytes: &[u8], at: &mut usize) -> Result<u32, String> {
	let mut value = 0u32;
	for shift in (0..35).step_by(7) {
		let byte = *bytes.get(*at).ok_or("a number runs past the end")?;
		*at += 1;
		value |= u32::from(byte & 0x7f) << shift;
		if byte & 0x80 == 0 {
			return Ok(value);
		}
	}
	Err("a number is longer than 5 bytes".into())
}

#[cfg(test)]
mod tests {
	use super::*;

	fn leb(mut n: usize) -> Vec<u8> {
		let mut out = Vec::new();
		loop {
			let byte = (n & 0x7f) as u8;
			n >>= 7;
			if n == 0 {
				out.push(byte);
				return out;
			}
			out.push(byte | 0x80);
		}
	}

	fn section(id: u8, contents: &[u8]) -> Vec<u8> {
		let mut out = vec![id];
		out.extend(leb(contents.len()));
		out.extend_from_slice(contents);
		out
	}

	fn custom(name: &str, payload: &[u8]) -> Vec<u8> {
		let mut contents = leb(name.len());
		contents.extend_from_slice(name.as_bytes());
		contents.extend_from_slice(payload);
		section(0, &contents)
	}

	/// A module with one function `(param i32) (result i32)` whose body is `body`.
	fn module(body: &[u8], customs: &[Vec<u8>]) -> Vec<u8> {
		let mut m = b"\0asm\x01\0\0\0".to_vec();
		m.extend(section(1, &[1, 0x60, 1, 0x7f, 1, 0x7f])); // type: (i32) -> i32
		m.extend(section(3, &[1, 0])); // one function of type 0
		let mut code = vec![0]; // no locals
		code.extend_from_slice(body);
		code.push(0x0b); // end
		let mut contents = vec![1];
		contents.extend(leb(code.len()));
		contents.extend(code);
		m.extend(section(10, &contents));
		for c in customs {
			m.extend_from_slice(c);
		}
		m
	}

	fn compact() -> OptimizationOptions {
		// What the builder asks for when it compacts the runtime.
		let mut options = OptimizationOptions::new_opt_level_0();
		options
			.mvp_features_only()
			.debug_info(true)
			.add_pass(Pass::StripDwarf)
			.add_pass(Pass::SignextLowering);
		options
	}

	#[test]
	fn strips_dwarf_and_keeps_every_other_section_as_it_was() {
		let local_get = [0x20, 0];
		let keep = [custom("runtime_version", b"v1"), custom("name", b"\0\x01x")];
		let input = module(
			&local_get,
			&[custom(".debug_info", &[7; 300]), keep[0].clone(), custom(".debug_line", b"l"), keep[1].clone()],
		);
		let output = compact().apply(&input).unwrap();
		assert_eq!(output, module(&local_get, &keep));
		// Without debug info the name section goes too; other custom sections stay.
		let mut no_names = compact();
		no_names.debug_info(false);
		assert_eq!(no_names.apply(&input).unwrap(), module(&local_get, &keep[..1]));
	}

	#[test]
	fn refuses_a_sign_extension_operator_instead_of_passing_it_on() {
		let extend8 = [0x20, 0, 0xc0]; // local.get 0; i32.extend8_s
		let input = module(&extend8, &[]);
		let error = compact().apply(&input).unwrap_err();
		assert!(error.contains("sign extension"), "{error}");
		// Without the lowering pass and the 1.0-only baseline it is valid, and kept as it is.
		assert_eq!(OptimizationOptions::new_opt_level_0().apply(&input).unwrap(), input);
	}

	#[test]
	fn refuses_what_is_not_a_module() {
		assert!(compact().apply(b"\0asm\x01\0\0\0\x0a\x05\x01").is_err());
		assert!(compact().apply(b"not wasm").is_err());
	}

	#[test]
	fn run_reads_and_writes_files_in_place() {
		let dir = std::env::temp_dir().join(format!("wasm-opt-test-{}", std::process::id()));
		fs::create_dir_all(&dir).unwrap();
		let path = dir.join("m.wasm");
		fs::write(&path, module(&[0x20, 0], &[custom(".debug_str", b"s")])).unwrap();
		compact().run(&path, &path).unwrap();
		assert_eq!(fs::read(&path).unwrap(), module(&[0x20, 0], &[]));
		let missing = compact().run(dir.join("missing.wasm"), &path).unwrap_err();
		assert!(missing.to_string().starts_with("cannot read"), "{missing}");
		fs::remove_dir_all(&dir).unwrap();
	}
}
