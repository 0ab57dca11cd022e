//! Models: decoder blocks, the native (Fuyu-style) model, presets, generation and checkpoints.

pub mod checkpoint;
pub mod config;
pub mod connector;
pub mod encoder;
pub mod generate;
pub mod hf_fuyu;
pub mod layers;
pub mod native;
pub mod presets;
pub mod resolve;
pub mod responder;

pub use checkpoint::{load_dir, LoadedModel, ModelDirConfig};
pub use config::{Activation, BoltConfig, ConnectorKind, EncoderConfig, ModelConfig, NormKind};
pub use native::{KvCache, NativeModel};
