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

/// Which side collation pads on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PadSide {
    /// Pad on the left (generation: all prompts end at the same column).
    Left,
    /// Pad on the right (training).
    Right,
}

/// Several sequences padded to one length, flattened row-major (`batch x seq_len`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Number of sequences.
    pub batch: usize,
    /// Padded length of every sequence.
    pub seq_len: usize,
    /// Token ids, `batch * seq_len`; padding uses `pad_id`.
    pub tokens: Vec<u32>,
    /// Position ids, `batch * seq_len`; padding gets 0, real tokens count from 0.
    pub positions: Vec<u32>,
    /// 1 for real tokens, 0 for padding, `batch * seq_len`.
    pub attention_mask: Vec<u8>,
    /// True where the token carries the loss, `batch * seq_len`.
    pub target_mask: Vec<bool>,
    /// Modality of every position, `batch * seq_len`.
    pub modality: Vec<Modality>,
    /// All patches of all sequences, row-major `n_patches x patch_dim`.
    pub patches: Vec<f32>,
    /// Length of one patch row.
    pub patch_dim: usize,
    /// Flat index (`b * seq_len + i`) of each patch row.
    pub patch_positions: Vec<usize>,
    /// All audio frames of all sequences, row-major `n_frames x frame_dim`.
    pub frames: Vec<f32>,
    /// Length of one frame row.
    pub frame_dim: usize,
    /// Flat index (`b * seq_len + i`) of each frame row.
    pub frame_positions: Vec<usize>,
}

/// Errors from collating sequences that cannot share one batch.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CollateError {
    /// Two sequences disagree on the patch or frame width.
    #[error("cannot batch sequences with different {what} widths ({a} vs {b})")]
    WidthMismatch {
        /// "patch" or "frame".
        what: &'static str,
        /// First width seen.
        a: usize,
        /// Conflicting width.
        b: usize,
    },
}

/// Pads `seqs` to the longest one and flattens them into a [`Batch`].
pub fn collate(seqs: &[MultimodalSequence], pad_id: u32, side: PadSide) -> Result<Batch, CollateError> {
    let seq_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let n = seqs.len() * seq_len;
    let mut b = Batch {
        batch: seqs.len(),
        seq_len,
        tokens: vec![pad_id; n],
        positions: vec![0; n],
        attention_mask: vec![0; n],
        target_mask: vec![false; n],
        modality: vec![Modality::Pad; n],
        ..Default::default()
    };
    for (bi, s) in seqs.iter().enumerate() {
        if s.n_patches() > 0 {
            if b.patch_dim != 0 && b.patch_dim != s.patch_dim {
                return Err(CollateError::WidthMismatch { what: "patch", a: b.patch_dim, b: s.patch_dim });
            }
            b.patch_dim = s.patch_dim;
        }
        if s.n_frames() > 0 {
            if b.frame_dim != 0 && b.frame_dim != s.frame_dim {
                return Err(CollateError::WidthMismatch { what: "frame", a: b.frame_dim, b: s.frame_dim });
            }
            b.frame_dim = s.frame_dim;
        }
        let offset = match side {
            PadSide::Left => seq_len - s.len(),
            PadSide::Right => 0,
        };
        let base = bi * seq_len + offset;
        b.tokens[base..base + s.len()].copy_from_slice(&s.tokens);
        b.positions[base..base + s.len()].copy_from_slice(&s.positions);
        b.target_mask[base..base + s.len()].copy_from_slice(&s.target_mask);
        b.modality[base..base + s.len()].copy_from_slice(&s.modality);
        b.attention_mask[base..base + s.len()].fill(1);
        b.patches.extend_from_slice(&s.patches);
        b.patch_positions.extend(s.patch_positions.iter().map(|p| base + p));
        b.frames.extend_from_slice(&s.frames);
        b.frame_positions.extend(s.frame_positions.iter().map(|p| base + p));
    }
    Ok(b)
}
