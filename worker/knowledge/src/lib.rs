//! What the worker knows besides its model: DataNets (ingest, index, embedding, retrieval), the
//! attribution of an answer to the items it drew on (spans and the attribution rule), prompt
//! templates, and grounding a request in all of them.

pub mod attribution;
pub mod datanets;
pub mod grounding;
pub mod templates;
