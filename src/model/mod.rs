//! Models: decoder blocks, the native (Fuyu-style) model, presets, generation and checkpoints.

pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod layers;
pub mod native;
pub mod presets;
pub mod resolve;
pub mod responder;

pub use checkpoint::{load_dir, LoadedModel, ModelDirConfig};
pub use config::{Activation, ModelConfig, NormKind};
pub use native::{KvCache, NativeModel};
