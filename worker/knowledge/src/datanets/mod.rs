//! DataNets in the worker: ingest a directory of documents into a per-DataNet on-disk index
//! (normalised items keyed by the content hash the chain stores, embedded with
//! all-MiniLM-L6-v2), and retrieve the items most similar to a question, with attribution
//! weights in parts per million.
//!
//! - [`embed`]: the sentence embedder (all-MiniLM-L6-v2, sentence-transformers' pooling) on
//!   [`bert`], our CPU BERT encoder;
//! - [`ingest`]: reading, chunking, hashing, keeping an index in step with a directory;
//! - [`index`]: the crash-safe, checksummed on-disk format;
//! - [`retrieve`]: exact top-k search and [`attribution_weights`].

pub mod bert;
pub mod embed;
pub mod index;
pub mod ingest;
pub mod retrieve;

pub use embed::{find_minilm, Embedder, EmbeddingModel};
pub use index::{datanet_dir, list_datanets, DataNetIndex, IndexError, IndexWriter, IndexedItem, ItemRecord};
pub use ingest::{chunk_text, ingest_dir, IngestOptions, IngestReport};
pub use retrieve::{attribution_weights, ppm_weights, Hit, Retriever};
