//! Early-fusion tokenizer: text, image patches, audio frames and video frames into one sequence.

pub mod sequence;

pub use sequence::{collate, Batch, Modality, MultimodalSequence, PadSide};
