//! ModelFactory: LoRA adapters trained on the worker from DataNets' accepted items. The base
//! model stays frozen; the adapter's weights are trained with a forward and backward pass of our
//! own over f32 products (candle's autograd would form every frozen weight's gradient too), and
//! written in PEFT's format with a manifest of every item trained on.

pub mod data;
pub mod influence;
pub mod linalg;
pub mod lora;
pub mod manifest;
pub mod model;
pub mod ops;
pub mod optim;
pub mod testing;
pub mod train;
