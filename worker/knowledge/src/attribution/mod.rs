//! Attribution: which DataNet items and DataNets a response owes something to, and how much.
//!
//! - [`spans`]: verbatim spans of the output found in DataNet items (a suffix-array index, in
//!   the manner of infini-gram / OLMoTrace), re-checkable by anyone holding the item texts;
//! - [`rule`]: the attribution rule: retrieval hits, span hits and the adapter's training provenance combined into
//!   a receipt's [`AttributionEntry`](openledger_primitives::AttributionEntry) list, summing to
//!   exactly [`PPM`](openledger_primitives::PPM).

mod sais;
pub mod spans;
pub mod rule;

pub use spans::{Span, SpanConfig, SpanIndex, SpanIndexError, DEFAULT_MAX_ITEMS_PER_SPAN, DEFAULT_MIN_WORDS};
pub use rule::{combine, span_hits, AttributionPolicy, RetrievalHit, SpanHit, TrainingShare};
