//! Errors of the early-fusion tokenizer; every variant names its input and what was wrong.

use std::path::PathBuf;

/// Anything that can go wrong while turning text, images, audio or video into a sequence.
///
/// In-memory inputs (no file behind them) are named by a placeholder path such as
/// `<in-memory audio>`.
#[derive(Debug, thiserror::Error)]
pub enum FusionError {
    /// A file could not be opened or read (the cause is the error's source).
    #[error("{}: cannot read file", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An image file is truncated, corrupt or in an unsupported format.
    #[error("{}: cannot decode image: {detail}", path.display())]
    ImageDecode {
        /// The image file.
        path: PathBuf,
        /// What the decoder reported.
        detail: String,
    },
    /// An image's header asks for more pixels or memory than the decoding limits allow.
    #[error("{}: image exceeds the decoding limits ({detail}); at most {max_side}x{max_side} pixels and {max_mib} MiB are allowed", path.display())]
    ImageTooLarge {
        /// The image file.
        path: PathBuf,
        /// What the decoder reported.
        detail: String,
        /// Largest allowed width or height in pixels.
        max_side: u32,
        /// Largest allowed decoding allocation in MiB.
        max_mib: u64,
    },
    /// An image with zero width or height.
    #[error("{}: image has zero size ({width}x{height})", path.display())]
    ImageEmpty {
        /// The image (file or in-memory placeholder).
        path: PathBuf,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The resampler failed (should not happen for valid sizes).
    #[error("{}: cannot resize image from {from_w}x{from_h} to {to_w}x{to_h}: {detail}", path.display())]
    ImageResize {
        /// The image (file or in-memory placeholder).
        path: PathBuf,
        /// Source width.
        from_w: u32,
        /// Source height.
        from_h: u32,
        /// Target width.
        to_w: u32,
        /// Target height.
        to_h: u32,
        /// What the resizer reported.
        detail: String,
    },
    /// An audio file whose container or codec is not supported.
    #[error("{}: unsupported audio format: {detail}", path.display())]
    AudioUnsupported {
        /// The audio file.
        path: PathBuf,
        /// What the prober or codec registry reported.
        detail: String,
    },
    /// An audio file that is corrupt or truncated in a way the decoder cannot skip.
    #[error("{}: cannot decode audio: {detail}", path.display())]
    AudioDecode {
        /// The audio file.
        path: PathBuf,
        /// What the decoder reported.
        detail: String,
    },
    /// Audio with no samples.
    #[error("{}: audio is empty (no samples)", path.display())]
    AudioEmpty {
        /// The audio (file or in-memory placeholder).
        path: PathBuf,
    },
    /// Audio longer than the configured cap.
    #[error("{}: audio is {seconds:.2} s long, over the cap of {max_seconds} s (audio.max_seconds)", path.display())]
    AudioTooLong {
        /// The audio (file or in-memory placeholder).
        path: PathBuf,
        /// Length seen so far in seconds (decoding stops at the cap, so this is a lower bound).
        seconds: f32,
        /// The configured cap.
        max_seconds: f32,
    },
    /// Audio too short to give a single feature frame.
    #[error("{}: audio has {samples} samples at 16 kHz, fewer than the {min_samples} one feature frame needs", path.display())]
    AudioTooShort {
        /// The audio (file or in-memory placeholder).
        path: PathBuf,
        /// Samples given.
        samples: usize,
        /// Samples needed for one frame.
        min_samples: usize,
    },
    /// Resampling to 16 kHz failed.
    #[error("{}: cannot resample audio from {from_hz} Hz to 16000 Hz: {detail}", path.display())]
    Resample {
        /// The audio file.
        path: PathBuf,
        /// Source sample rate.
        from_hz: u32,
        /// What the resampler reported.
        detail: String,
    },
    /// A video (animated GIF or frame list) with no frames.
    #[error("{}: video has no frames", path.display())]
    VideoEmpty {
        /// The video file or in-memory placeholder.
        path: PathBuf,
    },
    /// The images and video frames of one prompt need more visual tokens than allowed.
    #[error("{}: visual inputs need {tokens} tokens (patches + row/frame markers), over max_visual_tokens = {max}", path.display())]
    TooManyVisualTokens {
        /// The input that crossed the cap.
        path: PathBuf,
        /// Visual tokens needed up to and including this input.
        tokens: usize,
        /// The configured cap.
        max: usize,
    },
    /// A tokenizer file could not be loaded, saved or used.
    #[error("{}: tokenizer error: {detail}", path.display())]
    Tokenizer {
        /// The tokenizer.json file, or `<in-memory tokenizer>`.
        path: PathBuf,
        /// What the tokenizers library reported.
        detail: String,
    },
    /// A configuration value is out of range.
    #[error("invalid config: {field} = {value}: {expected}")]
    Config {
        /// Dotted field name, e.g. `image.patch`.
        field: &'static str,
        /// The offending value, printed.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl FusionError {
    /// Builds a [`FusionError::Config`] error.
    pub(crate) fn config(
        field: &'static str,
        value: impl ToString,
        expected: &'static str,
    ) -> Self {
        FusionError::Config {
            field,
            value: value.to_string(),
            expected,
        }
    }
}
