//! One interleaved multimodal sequence and the batch that collates several of them.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::audio::{audio_features_named, in_memory_name, load_audio_capped, AudioConfig};
use super::error::FusionError;
use super::image::{check_not_empty, load_image, patchify, ImageConfig, PatchGrid};
use super::text::TextTokenizer;
use super::video::{video_frames, MAX_VIDEO_STRIDE};

/// What kind of input a token position carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
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
    /// TokenKind of every token.
    pub modality: Vec<TokenKind>,
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
    /// One entry per image: its rows of `patches` and its token slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageSpan>,
    /// One entry per audio clip: its rows of `frames` and its token slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audio: Vec<AudioSpan>,
}

/// Where one audio clip's frames are and which token slots it fills (one per frame in the
/// native layout; fewer for an audio encoder that downsamples or resamples).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioSpan {
    /// First row of the clip in the frame matrix.
    pub frame_start: usize,
    /// Frames of the clip.
    pub n_frames: usize,
    /// Index into `frame_positions` of its first slot.
    pub slot_start: usize,
    /// Number of token slots it fills.
    pub n_slots: usize,
}

/// How many token slots an audio clip of `n` frames fills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioSlots {
    /// One per frame (native).
    #[default]
    PerFrame,
    /// `ceil(n / 2)`: an encoder with a stride-2 convolution, one slot per output.
    Halved,
    /// A fixed number whatever the length (resampling connectors).
    Fixed(usize),
}

impl AudioSlots {
    /// Slots for a clip of `n` frames.
    pub fn slots(&self, n: usize) -> usize {
        match self {
            AudioSlots::PerFrame => n,
            AudioSlots::Halved => n.div_ceil(2),
            AudioSlots::Fixed(k) => *k,
        }
    }
}

/// Where one image's patches are and which token slots it fills.
///
/// A native (Fuyu) image fills one slot per patch (`slot_start == patch_start`,
/// `n_slots == rows * cols`); an image for a resampling connector (Q-Former, perceiver)
/// fills a fixed number of slots whatever its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpan {
    /// First row of the image in the patch matrix.
    pub patch_start: usize,
    /// Patch rows of its grid.
    pub rows: usize,
    /// Patches per grid row.
    pub cols: usize,
    /// Index into `patch_positions` of its first slot.
    pub slot_start: usize,
    /// Number of token slots it fills.
    pub n_slots: usize,
}

impl ImageSpan {
    /// Number of patches of the image.
    pub fn n_patches(&self) -> usize {
        self.rows * self.cols
    }
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

    /// Number of image patches (rows of the patch matrix).
    pub fn n_patches(&self) -> usize {
        self.patches.len() / self.patch_dim.max(1)
    }

    /// Number of audio frames (rows of the frame matrix).
    pub fn n_frames(&self) -> usize {
        self.frames.len() / self.frame_dim.max(1)
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
    /// TokenKind of every position, `batch * seq_len`.
    pub modality: Vec<TokenKind>,
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
    /// Every image of every sequence (patch rows and slots offset into the batch).
    pub images: Vec<ImageSpan>,
    /// Every audio clip of every sequence (frame rows and slots offset into the batch).
    pub audio: Vec<AudioSpan>,
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
pub fn collate(
    seqs: &[MultimodalSequence],
    pad_id: u32,
    side: PadSide,
) -> Result<Batch, CollateError> {
    let seq_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let n = seqs.len() * seq_len;
    let mut b = Batch {
        batch: seqs.len(),
        seq_len,
        tokens: vec![pad_id; n],
        positions: vec![0; n],
        attention_mask: vec![0; n],
        target_mask: vec![false; n],
        modality: vec![TokenKind::Pad; n],
        ..Default::default()
    };
    for (bi, s) in seqs.iter().enumerate() {
        if s.n_patches() > 0 {
            if b.patch_dim != 0 && b.patch_dim != s.patch_dim {
                return Err(CollateError::WidthMismatch {
                    what: "patch",
                    a: b.patch_dim,
                    b: s.patch_dim,
                });
            }
            b.patch_dim = s.patch_dim;
        }
        if s.n_frames() > 0 {
            if b.frame_dim != 0 && b.frame_dim != s.frame_dim {
                return Err(CollateError::WidthMismatch {
                    what: "frame",
                    a: b.frame_dim,
                    b: s.frame_dim,
                });
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
        let (p0, s0) = (
            b.patches.len() / b.patch_dim.max(1),
            b.patch_positions.len(),
        );
        b.images.extend(s.images.iter().map(|im| ImageSpan {
            patch_start: im.patch_start + p0,
            slot_start: im.slot_start + s0,
            ..*im
        }));
        b.patches.extend_from_slice(&s.patches);
        b.patch_positions
            .extend(s.patch_positions.iter().map(|p| base + p));
        let (f0, a0) = (b.frames.len() / b.frame_dim.max(1), b.frame_positions.len());
        b.audio.extend(s.audio.iter().map(|a| AudioSpan {
            frame_start: a.frame_start + f0,
            slot_start: a.slot_start + a0,
            ..*a
        }));
        b.frames.extend_from_slice(&s.frames);
        b.frame_positions
            .extend(s.frame_positions.iter().map(|p| base + p));
    }
    Ok(b)
}

// ---------------------------------------------------------------------------
// The builder: segments -> one MultimodalSequence.
// ---------------------------------------------------------------------------

/// Visual-token cap [`SequenceBuilder::new`] uses (patches + row markers + frame separators).
pub const DEFAULT_MAX_VISUAL_TOKENS: usize = 8192;

/// An image given as a file or already in memory.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageInput {
    /// An image file (PNG, JPEG, WebP, GIF, BMP).
    Path(PathBuf),
    /// A decoded RGB image.
    Image(RgbImage),
}

/// Audio given as a file or as 16 kHz mono samples.
#[derive(Clone, Debug, PartialEq)]
pub enum AudioInput {
    /// An audio file (WAV, FLAC, MP3, OGG/Vorbis); decoded, mixed to mono, resampled to 16 kHz.
    Path(PathBuf),
    /// Samples at 16 kHz, mono.
    Samples(Vec<f32>),
}

/// One piece of a prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    /// Plain text, tokenised without special tokens.
    Text(String),
    /// One image: its patches, with `|NEWLINE|` after each row of patches.
    Image(ImageInput),
    /// One audio clip: one placeholder per frame.
    Audio(AudioInput),
    /// A video: the frames of the listed images (an animated GIF contributes all its frames),
    /// every `video_stride`-th kept, separated by `|FRAME|`.
    Video(Vec<ImageInput>),
    /// An answer: `<boa>` (if not already there), the answer tokens and `<eos>`; the answer
    /// tokens and `<eos>` are training targets.
    Answer(String),
}

/// Where the builder puts `<bos>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BosPlacement {
    /// `<bos>` is the first token (our models).
    #[default]
    First,
    /// `<bos>` follows the images that open the prompt, as HF's `FuyuProcessor` lays out
    /// `|SPEAKER|... |NEWLINE| <s> text <0x04>` (use with HF Fuyu weights).
    AfterLeadingImages,
}

/// Turns a list of [`Segment`]s into one [`MultimodalSequence`].
///
/// Layout: `<bos>`, the segments in order, and `<boa>` before every answer and at the
/// end of a prompt that does not end with an answer. So `[Image, Text(q), Answer(a)]`
/// becomes `<bos> patches(+|NEWLINE| per row) q <boa> a <eos>` with `target_mask` true on
/// `a <eos>`, and `[Image, Text(q)]` becomes the generation prompt `<bos> ... q <boa>`.
#[derive(Clone, Debug)]
pub struct SequenceBuilder {
    /// Text tokenizer and special-token ids.
    pub tokenizer: Arc<TextTokenizer>,
    /// How images become patches.
    pub image: ImageConfig,
    /// How audio becomes frames.
    pub audio: AudioConfig,
    /// Most visual tokens (patches, row markers, frame separators) one sequence may hold.
    pub max_visual_tokens: usize,
    /// Keep every `video_stride`-th video frame (1 keeps all).
    pub video_stride: usize,
    /// Token slots per image for resampling connectors (`None`: one slot per patch and a
    /// `|NEWLINE|` after each patch row, the native layout).
    pub image_tokens: Option<usize>,
    /// Token slots per audio clip (one per frame in the native layout).
    pub audio_slots: AudioSlots,
}

/// The sequence under construction plus the visual-token count.
struct Acc {
    seq: MultimodalSequence,
    visual: usize,
}

impl Acc {
    fn push(&mut self, token: u32, modality: TokenKind, target: bool) {
        let pos = self.seq.tokens.len();
        self.seq.tokens.push(token);
        self.seq.modality.push(modality);
        self.seq.positions.push(pos as u32);
        self.seq.target_mask.push(target);
    }

    fn last(&self) -> Option<u32> {
        self.seq.tokens.last().copied()
    }

    /// Appends a patch grid: placeholders row by row, `newline` after each row; or, with
    /// `slots`, that many placeholders and no newlines (a resampled image).
    fn push_grid(
        &mut self,
        grid: &PatchGrid,
        image_id: u32,
        newline_id: u32,
        slots: Option<usize>,
    ) {
        let span = ImageSpan {
            patch_start: self.seq.patches.len() / grid.patch_dim.max(1),
            rows: grid.rows,
            cols: grid.cols,
            slot_start: self.seq.patch_positions.len(),
            n_slots: slots.unwrap_or(grid.n_patches()),
        };
        match slots {
            None => {
                for _ in 0..grid.rows {
                    for _ in 0..grid.cols {
                        self.seq.patch_positions.push(self.seq.tokens.len());
                        self.push(image_id, TokenKind::ImagePatch, false);
                    }
                    self.push(newline_id, TokenKind::ImageNewline, false);
                }
            }
            Some(n) => {
                for _ in 0..n {
                    self.seq.patch_positions.push(self.seq.tokens.len());
                    self.push(image_id, TokenKind::ImagePatch, false);
                }
            }
        }
        self.seq.patches.extend_from_slice(&grid.data);
        self.seq.images.push(span);
    }
}

impl SequenceBuilder {
    /// A builder with [`DEFAULT_MAX_VISUAL_TOKENS`] and every video frame kept.
    pub fn new(tokenizer: Arc<TextTokenizer>, image: ImageConfig, audio: AudioConfig) -> Self {
        SequenceBuilder {
            tokenizer,
            image,
            audio,
            max_visual_tokens: DEFAULT_MAX_VISUAL_TOKENS,
            video_stride: 1,
            image_tokens: None,
            audio_slots: AudioSlots::PerFrame,
        }
    }

    /// Checks the image and audio configs, the stride and the cap.
    pub fn validate(&self) -> Result<(), FusionError> {
        self.image.validate()?;
        self.audio.validate()?;
        if self.video_stride == 0 || self.video_stride > MAX_VIDEO_STRIDE {
            return Err(FusionError::config(
                "video_stride",
                self.video_stride,
                "between 1 and 1000",
            ));
        }
        if self.max_visual_tokens == 0 {
            return Err(FusionError::config(
                "max_visual_tokens",
                self.max_visual_tokens,
                "at least 1",
            ));
        }
        Ok(())
    }

    fn empty_acc(&self) -> Acc {
        Acc {
            seq: MultimodalSequence {
                patch_dim: self.image.patch_dim(),
                frame_dim: self.audio.frame_dim(),
                ..Default::default()
            },
            visual: 0,
        }
    }

    /// Builds the sequence for `segments` with `<bos>` first (see the type docs for the layout).
    pub fn build(&self, segments: &[Segment]) -> Result<MultimodalSequence, FusionError> {
        self.build_placed(segments, BosPlacement::First)
    }

    /// Builds the sequence for `segments`, putting `<bos>` where `placement` says.
    pub fn build_placed(
        &self,
        segments: &[Segment],
        placement: BosPlacement,
    ) -> Result<MultimodalSequence, FusionError> {
        self.validate()?;
        let sp = self.tokenizer.specials;
        let mut acc = self.empty_acc();
        let bos_at = match placement {
            BosPlacement::First => 0,
            BosPlacement::AfterLeadingImages => segments
                .iter()
                .position(|s| !matches!(s, Segment::Image(_)))
                .unwrap_or(segments.len()),
        };
        for (i, seg) in segments.iter().enumerate() {
            if i == bos_at {
                acc.push(sp.bos, TokenKind::Text, false);
            }
            match seg {
                Segment::Text(t) => {
                    for id in self.tokenizer.encode(t)? {
                        acc.push(id, TokenKind::Text, false);
                    }
                }
                Segment::Image(input) => {
                    let (img, name) = match input {
                        ImageInput::Path(p) => (Cow::Owned(load_image(p)?), p.clone()),
                        ImageInput::Image(img) => (Cow::Borrowed(img), in_memory_image()),
                    };
                    self.push_image(&mut acc, &img, &name)?;
                }
                Segment::Video(inputs) => self.push_video(&mut acc, inputs)?,
                Segment::Audio(input) => {
                    let frames = match input {
                        AudioInput::Path(p) => {
                            let samples = load_audio_capped(p, self.audio.max_seconds)?;
                            audio_features_named(&samples, &self.audio, p)?
                        }
                        AudioInput::Samples(s) => {
                            audio_features_named(s, &self.audio, &in_memory_name())?
                        }
                    };
                    let n_slots = self.audio_slots.slots(frames.n);
                    acc.seq.audio.push(AudioSpan {
                        frame_start: acc.seq.frames.len() / frames.dim.max(1),
                        n_frames: frames.n,
                        slot_start: acc.seq.frame_positions.len(),
                        n_slots,
                    });
                    for _ in 0..n_slots {
                        acc.seq.frame_positions.push(acc.seq.tokens.len());
                        acc.push(sp.audio, TokenKind::AudioFrame, false);
                    }
                    acc.seq.frames.extend_from_slice(&frames.data);
                }
                Segment::Answer(a) => {
                    if acc.last() != Some(sp.boa) {
                        acc.push(sp.boa, TokenKind::Text, false);
                    }
                    for id in self.tokenizer.encode(a)? {
                        acc.push(id, TokenKind::Text, true);
                    }
                    acc.push(sp.eos, TokenKind::Text, true);
                }
            }
        }
        if bos_at == segments.len() {
            acc.push(sp.bos, TokenKind::Text, false);
        }
        if !matches!(segments.last(), Some(Segment::Answer(_))) {
            acc.push(sp.boa, TokenKind::Text, false);
        }
        Ok(acc.seq)
    }

    /// Patchifies one image (after checking the visual-token cap) and appends it.
    fn push_image(&self, acc: &mut Acc, img: &RgbImage, name: &Path) -> Result<(), FusionError> {
        check_not_empty(img, name)?;
        let (rows, cols) = self
            .image
            .grid_size(img.height() as usize, img.width() as usize);
        let needed = acc.visual + self.image_tokens.unwrap_or(rows * (cols + 1));
        if needed > self.max_visual_tokens {
            return Err(FusionError::TooManyVisualTokens {
                path: name.to_path_buf(),
                tokens: needed,
                max: self.max_visual_tokens,
            });
        }
        let grid = patchify(img, &self.image);
        acc.visual = needed;
        let sp = self.tokenizer.specials;
        acc.push_grid(&grid, sp.image, sp.newline, self.image_tokens);
        Ok(())
    }

    /// Appends the sampled frames of a video, separated by `|FRAME|`.
    fn push_video(&self, acc: &mut Acc, inputs: &[ImageInput]) -> Result<(), FusionError> {
        let sp = self.tokenizer.specials;
        let mut index = 0usize;
        let mut kept = 0usize;
        for input in inputs {
            let (frames, name): (Box<dyn Iterator<Item = Result<RgbImage, FusionError>>>, _) =
                match input {
                    ImageInput::Path(p) => (video_frames(p)?, p.clone()),
                    ImageInput::Image(img) => (
                        Box::new(std::iter::once(Ok(img.clone()))),
                        in_memory_image(),
                    ),
                };
            for frame in frames {
                let keep = index.is_multiple_of(self.video_stride);
                index += 1;
                let frame = frame?;
                if !keep {
                    continue;
                }
                if kept > 0 {
                    if acc.visual + 1 > self.max_visual_tokens {
                        return Err(FusionError::TooManyVisualTokens {
                            path: name.clone(),
                            tokens: acc.visual + 1,
                            max: self.max_visual_tokens,
                        });
                    }
                    acc.visual += 1;
                    acc.push(sp.frame, TokenKind::VideoFrameSep, false);
                }
                self.push_image(acc, &frame, &name)?;
                kept += 1;
            }
        }
        if kept == 0 {
            let path = match inputs.first() {
                Some(ImageInput::Path(p)) => p.clone(),
                _ => PathBuf::from("<in-memory video>"),
            };
            return Err(FusionError::VideoEmpty { path });
        }
        Ok(())
    }

    /// Fast path for training: `<bos> grid question <boa> [answer <eos>]` from pre-tokenised ids.
    ///
    /// No tokenising, no config validation and no visual-token cap: the caller has made
    /// `grid` with [`crate::fusion::image::patchify`] and the ids with [`TextTokenizer::encode`].
    /// The answer ids and `<eos>` are targets.
    pub fn build_with_patches(
        &self,
        grid: &PatchGrid,
        question_ids: &[u32],
        answer_ids: Option<&[u32]>,
    ) -> MultimodalSequence {
        let sp = self.tokenizer.specials;
        let n = 3 + grid.n_tokens() + question_ids.len() + answer_ids.map_or(0, |a| a.len());
        let mut acc = Acc {
            seq: MultimodalSequence {
                tokens: Vec::with_capacity(n),
                modality: Vec::with_capacity(n),
                positions: Vec::with_capacity(n),
                target_mask: Vec::with_capacity(n),
                patches: Vec::with_capacity(grid.data.len()),
                patch_dim: grid.patch_dim,
                patch_positions: Vec::with_capacity(grid.n_patches()),
                frame_dim: self.audio.frame_dim(),
                ..Default::default()
            },
            visual: 0,
        };
        acc.push(sp.bos, TokenKind::Text, false);
        acc.push_grid(grid, sp.image, sp.newline, self.image_tokens);
        for &id in question_ids {
            acc.push(id, TokenKind::Text, false);
        }
        acc.push(sp.boa, TokenKind::Text, false);
        if let Some(answer) = answer_ids {
            for &id in answer {
                acc.push(id, TokenKind::Text, true);
            }
            acc.push(sp.eos, TokenKind::Text, true);
        }
        acc.seq
    }
}

/// Name errors use for images that did not come from a file.
fn in_memory_image() -> PathBuf {
    PathBuf::from("<in-memory image>")
}

/// Per-modality token counts of a sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModalityCounts {
    /// Text tokens (specials included).
    pub text: usize,
    /// Image patch placeholders.
    pub image_patch: usize,
    /// `|NEWLINE|` tokens.
    pub image_newline: usize,
    /// Audio frame placeholders.
    pub audio_frame: usize,
    /// `|FRAME|` separators.
    pub video_frame_sep: usize,
    /// Padding.
    pub pad: usize,
    /// Tokens with `target_mask` set.
    pub targets: usize,
}

impl MultimodalSequence {
    /// Counts tokens per modality (and targets).
    pub fn counts(&self) -> ModalityCounts {
        let mut c = ModalityCounts::default();
        for m in &self.modality {
            match m {
                TokenKind::Text => c.text += 1,
                TokenKind::ImagePatch => c.image_patch += 1,
                TokenKind::ImageNewline => c.image_newline += 1,
                TokenKind::AudioFrame => c.audio_frame += 1,
                TokenKind::VideoFrameSep => c.video_frame_sep += 1,
                TokenKind::Pad => c.pad += 1,
            }
        }
        c.targets = self.target_mask.iter().filter(|&&t| t).count();
        c
    }

    /// A human-readable layout: counts per modality, then each run of tokens in order, with
    /// every image drawn as its patch grid (`P` per patch, `|NEWLINE|` per row).
    pub fn render_layout(&self, tok: &TextTokenizer) -> String {
        use std::fmt::Write as _;
        let c = self.counts();
        let mut out = String::new();
        let _ = writeln!(out, "total tokens: {}", self.len());
        let _ = writeln!(
            out,
            "  text {}  image patches {}  image newlines {}  audio frames {}  video frame separators {}",
            c.text, c.image_patch, c.image_newline, c.audio_frame, c.video_frame_sep
        );
        let _ = writeln!(
            out,
            "  patch matrix {} x {}  frame matrix {} x {}  targets {}",
            self.n_patches(),
            self.patch_dim,
            self.n_frames(),
            self.frame_dim,
            c.targets
        );
        let _ = writeln!(out, "layout (position: run):");
        let name = |id: u32| tok.id_to_token(id).unwrap_or_else(|| format!("#{id}"));
        let mut i = 0;
        while i < self.len() {
            let m = self.modality[i];
            let start = i;
            match m {
                TokenKind::ImagePatch | TokenKind::ImageNewline => {
                    let mut rows: Vec<usize> = Vec::new();
                    let mut cols = 0;
                    while i < self.len()
                        && matches!(
                            self.modality[i],
                            TokenKind::ImagePatch | TokenKind::ImageNewline
                        )
                    {
                        if self.modality[i] == TokenKind::ImageNewline {
                            rows.push(cols);
                            cols = 0;
                        } else {
                            cols += 1;
                        }
                        i += 1;
                    }
                    if cols > 0 {
                        rows.push(cols);
                    }
                    let width = rows.first().copied().unwrap_or(0);
                    let _ = writeln!(
                        out,
                        "{start:>6}: image, {} rows x {width} patches",
                        rows.len()
                    );
                    for r in &rows {
                        let _ = writeln!(
                            out,
                            "        {} {}",
                            "P".repeat(*r),
                            name(tok.specials.newline)
                        );
                    }
                }
                TokenKind::AudioFrame => {
                    while i < self.len() && self.modality[i] == TokenKind::AudioFrame {
                        i += 1;
                    }
                    let _ = writeln!(
                        out,
                        "{start:>6}: audio, {} frames of {} values",
                        i - start,
                        self.frame_dim
                    );
                }
                TokenKind::VideoFrameSep | TokenKind::Pad => {
                    let _ = writeln!(out, "{start:>6}: {}", name(self.tokens[i]));
                    i += 1;
                }
                TokenKind::Text => {
                    let target = self.target_mask[i];
                    while i < self.len()
                        && self.modality[i] == TokenKind::Text
                        && self.target_mask[i] == target
                    {
                        i += 1;
                    }
                    let pieces: Vec<String> = self.tokens[start..i]
                        .iter()
                        .map(|&id| {
                            if tok.specials.contains(id) {
                                name(id)
                            } else {
                                format!("{:?}", tok.decode(&[id]).unwrap_or_else(|_| name(id)))
                            }
                        })
                        .collect();
                    let label = if target { "answer (target)" } else { "text" };
                    let _ = writeln!(out, "{start:>6}: {label}: {}", pieces.join(" "));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> SequenceBuilder {
        let tok = Arc::new(TextTokenizer::builtin().unwrap());
        SequenceBuilder::new(
            tok,
            ImageConfig {
                patch: 4,
                max_height: 64,
                max_width: 64,
            },
            AudioConfig::raw(10),
        )
    }

    fn img(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]))
    }

    #[test]
    fn training_sample_layout() {
        let b = builder();
        let sp = b.tokenizer.specials;
        let q = b.tokenizer.encode("Is there a ring?").unwrap();
        let a = b.tokenizer.encode("yes").unwrap();
        let seq = b
            .build(&[
                Segment::Image(ImageInput::Image(img(8, 12))),
                Segment::Text("Is there a ring?".into()),
                Segment::Answer("yes".into()),
            ])
            .unwrap();
        // <bos>, 3 rows x (2 patches + newline), question, <boa>, answer, <eos>
        let n = 1 + 9 + q.len() + 1 + a.len() + 1;
        assert_eq!(seq.len(), n);
        assert_eq!(seq.tokens[0], sp.bos);
        assert_eq!(
            &seq.tokens[1..10],
            &[
                sp.image, sp.image, sp.newline, sp.image, sp.image, sp.newline, sp.image, sp.image,
                sp.newline
            ]
        );
        assert_eq!(seq.patch_positions, vec![1, 2, 4, 5, 7, 8]);
        assert_eq!(seq.patches.len(), 6 * 48);
        assert_eq!(seq.patch_dim, 48);
        assert_eq!(&seq.tokens[10..10 + q.len()], &q[..]);
        let boa = 10 + q.len();
        assert_eq!(seq.tokens[boa], sp.boa);
        assert_eq!(&seq.tokens[boa + 1..n - 1], &a[..]);
        assert_eq!(seq.tokens[n - 1], sp.eos);
        let targets: Vec<usize> = (0..n).filter(|&i| seq.target_mask[i]).collect();
        assert_eq!(targets, (boa + 1..n).collect::<Vec<_>>());
        assert_eq!(seq.positions, (0..n as u32).collect::<Vec<_>>());
        assert_eq!(seq.modality.len(), n);
        assert_eq!(seq.modality[3], TokenKind::ImageNewline);
    }

    #[test]
    fn generation_prompt_ends_with_boa() {
        let b = builder();
        let seq = b
            .build(&[
                Segment::Image(ImageInput::Image(img(4, 4))),
                Segment::Text("Count.".into()),
            ])
            .unwrap();
        assert_eq!(*seq.tokens.last().unwrap(), b.tokenizer.specials.boa);
        assert!(seq.target_mask.iter().all(|&t| !t));
        let empty = b.build(&[]).unwrap();
        let sp = b.tokenizer.specials;
        assert_eq!(empty.tokens, vec![sp.bos, sp.boa]);
    }

    #[test]
    fn fast_path_equals_build() {
        let b = builder();
        let image = img(10, 7);
        let q = b.tokenizer.encode("How many?").unwrap();
        let a = b.tokenizer.encode("two").unwrap();
        let slow = b
            .build(&[
                Segment::Image(ImageInput::Image(image.clone())),
                Segment::Text("How many?".into()),
                Segment::Answer("two".into()),
            ])
            .unwrap();
        let grid = patchify(&image, &b.image);
        let fast = b.build_with_patches(&grid, &q, Some(&a));
        assert_eq!(slow, fast);
        let slow_prompt = b
            .build(&[
                Segment::Image(ImageInput::Image(image)),
                Segment::Text("How many?".into()),
            ])
            .unwrap();
        assert_eq!(slow_prompt, b.build_with_patches(&grid, &q, None));
    }

    #[test]
    fn audio_frames_are_placeholders_with_rows() {
        let b = builder();
        let samples: Vec<f32> = (0..25).map(|i| i as f32 / 25.0).collect();
        let seq = b
            .build(&[
                Segment::Audio(AudioInput::Samples(samples.clone())),
                Segment::Text("What is it?".into()),
            ])
            .unwrap();
        assert_eq!(seq.n_frames(), 3);
        assert_eq!(seq.frame_dim, 10);
        assert_eq!(seq.frame_positions, vec![1, 2, 3]);
        assert_eq!(&seq.frames[..25], &samples[..]);
        assert!(seq.frames[25..].iter().all(|&v| v == 0.0));
        for &p in &seq.frame_positions {
            assert_eq!(seq.tokens[p], b.tokenizer.specials.audio);
            assert_eq!(seq.modality[p], TokenKind::AudioFrame);
        }
    }

    #[test]
    fn video_frames_are_strided_and_separated() {
        let mut b = builder();
        b.video_stride = 2;
        let frames: Vec<ImageInput> = (0..5).map(|_| ImageInput::Image(img(4, 4))).collect();
        let seq = b.build(&[Segment::Video(frames)]).unwrap();
        let c = seq.counts();
        // Frames 0, 2, 4 kept: 3 x (1 patch + 1 newline), 2 separators.
        assert_eq!(
            (c.image_patch, c.image_newline, c.video_frame_sep),
            (3, 3, 2)
        );
        let sep: Vec<usize> = (0..seq.len())
            .filter(|&i| seq.modality[i] == TokenKind::VideoFrameSep)
            .collect();
        assert_eq!(sep, vec![3, 6]);
        assert!(sep
            .iter()
            .all(|&i| seq.tokens[i] == b.tokenizer.specials.frame));
    }

    #[test]
    fn visual_cap_is_enforced_before_patchifying() {
        let mut b = builder();
        b.max_visual_tokens = 10;
        // 16 x 16 with patch 4 -> 4 rows x (4 + 1) = 20 tokens.
        let e = b
            .build(&[Segment::Image(ImageInput::Image(img(16, 16)))])
            .unwrap_err();
        assert!(
            matches!(
                e,
                FusionError::TooManyVisualTokens {
                    tokens: 20,
                    max: 10,
                    ..
                }
            ),
            "{e}"
        );
        let e = b.build(&[Segment::Video(vec![])]).unwrap_err();
        assert!(matches!(e, FusionError::VideoEmpty { .. }), "{e}");
    }

    #[test]
    fn hf_fuyu_order_puts_bos_after_leading_images() {
        let b = builder();
        let sp = b.tokenizer.specials;
        let seq = b
            .build_placed(
                &[
                    Segment::Image(ImageInput::Image(img(4, 4))),
                    Segment::Text("Hi".into()),
                ],
                BosPlacement::AfterLeadingImages,
            )
            .unwrap();
        assert_eq!(&seq.tokens[..3], &[sp.image, sp.newline, sp.bos]);
        let only_image = b
            .build_placed(
                &[Segment::Image(ImageInput::Image(img(4, 4)))],
                BosPlacement::AfterLeadingImages,
            )
            .unwrap();
        assert_eq!(
            only_image.tokens,
            vec![sp.image, sp.newline, sp.bos, sp.boa]
        );
    }

    #[test]
    fn built_sequences_collate() {
        let b = builder();
        let s1 = b
            .build(&[
                Segment::Image(ImageInput::Image(img(4, 4))),
                Segment::Answer("yes".into()),
            ])
            .unwrap();
        let s2 = b.build(&[Segment::Text("no image here".into())]).unwrap();
        let batch = collate(
            &[s1.clone(), s2.clone()],
            b.tokenizer.specials.pad,
            PadSide::Left,
        )
        .unwrap();
        assert_eq!(batch.seq_len, s1.len().max(s2.len()));
        assert_eq!(batch.patch_positions.len(), 1);
        let p = batch.patch_positions[0];
        assert_eq!(batch.tokens[p], b.tokenizer.specials.image);
    }

    #[test]
    fn specials_in_user_text_stay_text() {
        let b = builder();
        let seq = b
            .build(&[Segment::Text("<image> |NEWLINE| <eos>".into())])
            .unwrap();
        assert_eq!(seq.n_patches(), 0);
        let sp = b.tokenizer.specials;
        let inner = &seq.tokens[1..seq.len() - 1];
        assert!(inner.iter().all(|&t| !sp.contains(t)), "{inner:?}");
    }
}
