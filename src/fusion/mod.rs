//! Early-fusion tokenizer: text, image patches, audio frames and video frames into one sequence.
//!
//! - [`text`]: BPE training / `tokenizer.json` loading and the special-token ids;
//! - [`image`]: HF-Fuyu-exact resize, pad, normalise and patchify;
//! - [`audio`]: decoding, 16 kHz resampling, raw-window or Whisper log-mel frames;
//! - [`video`]: animated GIFs and frame lists;
//! - [`sequence`]: the interleaving builder, [`MultimodalSequence`] and [`collate`].

pub mod audio;
pub mod error;
pub mod image;
pub mod sequence;
pub mod text;
pub mod video;

pub use audio::{audio_features, load_audio, AudioConfig, AudioFrontend, FrameMatrix};
pub use error::FusionError;
pub use image::{load_image, patchify, ImageConfig, PatchGrid};
pub use sequence::{
    collate, AudioInput, AudioSlots, AudioSpan, Batch, BosPlacement, CollateError, ImageInput,
    ImageSpan, ModalityCounts, MultimodalSequence, PadSide, Segment, SequenceBuilder, TokenKind,
};
pub use text::{SpecialTokens, TextTokenizer};
