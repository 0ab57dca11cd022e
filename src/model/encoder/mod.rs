//! The encoders of the bolted-on designs: a small ViT over an image's patches
//! ([`VisionEncoder`]) and a Whisper-style encoder over an audio clip's frames
//! ([`AudioEncoder`]). Both give [`Encoded`] features, padded to the longest item.

mod audio;
mod vision;

use candle_core::Tensor;

pub use audio::AudioEncoder;
pub use vision::VisionEncoder;

/// Features of a batch of images or audio clips, padded to the longest.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// `(n_items, p, d_enc)` features; rows past an item's position count are padding.
    pub feats: Tensor,
    /// Additive key mask `(n_items, 1, 1, p)`: 0 on real positions, `-inf` on padding.
    pub key_mask: Tensor,
    /// Encoder positions of each item (an image's patches; half a clip's frames).
    pub n_positions: Vec<usize>,
}
