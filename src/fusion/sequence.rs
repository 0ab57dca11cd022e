//! One interleaved multimodal sequence and the batch that collates several of them.

use serde::{Deserialize, Serialize};

/// What kind of input a token position carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// A text token (including special tokens such as `<bos>` / `<boa>` / `<eos>`).
    Text,
    /// An image patch placeholder; its embedding comes from the patch matrix.
    ImagePatch,
    /// The `|NEWLINE|` token after each row of patches.
    ImageNewline,
    /// An audio frame placeholder; its embedding comes from the frame matrix.
    AudioFrame,
    /// The `|FRAME|` token between video frames.
    VideoFrameSep,
    /// Padding added by collation.
    Pad,
}

/// One prompt (plus optional answer) turned into a single token stream.
///
/// `tokens[i]` is a vocabulary id for every position; at image-patch and
/// audio-frame positions it is the placeholder id and the real embedding
/// comes from row `k` of `patches` / `frames` where `patch_positions[k] == i`
/// (resp. `frame_positions[k] == i`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MultimodalSequence {
    /// Token ids, placeholders included.
    pub tokens: Vec<u32>,
    /// Modality of every token.
    pub modality: Vec<Modality>,
    /// Position id of every token (0-based).
    pub positions: Vec<u32>,
    /// True for answer tokens that carry the training loss.
    pub target_mask: Vec<bool>,
    /// Patch matrix, row-major `n_patches x patch_dim`.
    pub patches: Vec<f32>,
    /// Length of one flattened patch (`patch * patch * 3`).
    pub patch_dim: usize,
    /// Token index of each patch row.
    pub patch_positions: Vec<usize>,
    /// Frame matrix, row-major `n_frames x frame_dim`.
    pub frames: Vec<f32>,
    /// Length of one audio frame feature vector.
    pub frame_dim: usize,
    /// Token index of each frame row.
    pub frame_positions: Vec<usize>,
}

impl MultimodalSequence {
    /// Number of token positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when the sequence holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of image patches.
    pub fn n_patches(&self) -> usize {
        self.patch_positions.len()
    }

    /// Number of audio frames.
    pub fn n_frames(&self) -> usize {
        self.frame_positions.len()
    }
}
