//! Storage migrations, one module per storage version they lead to.

pub mod v1;
