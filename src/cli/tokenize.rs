//! `mmlab tokenize`: show how text, images, audio and video fuse into one token sequence.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::fusion::audio::{AudioConfig, AudioFrontend};
use crate::fusion::image::ImageConfig;
use crate::fusion::sequence::{
    AudioInput, ImageInput, MultimodalSequence, Segment, SequenceBuilder, DEFAULT_MAX_VISUAL_TOKENS,
};
use crate::fusion::text::TextTokenizer;

/// Audio front-end choice on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FrontendArg {
    /// Non-overlapping raw windows of `--window` samples.
    Raw,
    /// Whisper log-mel, `--n-mels` bins, `--stack` frames per token.
    Logmel,
}

/// Arguments of `mmlab tokenize`.
///
/// The prompt is laid out as: images, then videos, then audio clips, then the text,
/// then the optional answer.
#[derive(Clone, Debug, clap::Args)]
pub struct TokenizeArgs {
    /// Image file(s) (PNG, JPEG, WebP, GIF, BMP).
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// Video(s): an animated GIF each.
    #[arg(long)]
    pub video: Vec<PathBuf>,
    /// Audio file(s) (WAV, FLAC, MP3, OGG/Vorbis).
    #[arg(long)]
    pub audio: Vec<PathBuf>,
    /// Prompt text.
    #[arg(long)]
    pub text: Option<String>,
    /// Answer text (shows a training sample: answer tokens and `<eos>` are targets).
    #[arg(long)]
    pub answer: Option<String>,
    /// Print the exact sequence as JSON instead of the readable layout.
    #[arg(long)]
    pub json: bool,
    /// A tokenizer.json to use (default: a small built-in BPE trained in memory).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Patch side in pixels.
    #[arg(long, default_value_t = 30)]
    pub patch: usize,
    /// Height of the box images are scaled down to fit.
    #[arg(long, default_value_t = 1080)]
    pub max_height: usize,
    /// Width of the box images are scaled down to fit.
    #[arg(long, default_value_t = 1920)]
    pub max_width: usize,
    /// Audio front-end.
    #[arg(long, value_enum, default_value_t = FrontendArg::Raw)]
    pub audio_frontend: FrontendArg,
    /// Samples per frame for the raw front-end.
    #[arg(long, default_value_t = 320)]
    pub window: usize,
    /// Mel bins for the log-mel front-end.
    #[arg(long, default_value_t = 80)]
    pub n_mels: usize,
    /// Log-mel frames stacked into one token.
    #[arg(long, default_value_t = 2)]
    pub stack: usize,
    /// Longest accepted audio in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub max_audio_seconds: f32,
    /// Keep every n-th video frame.
    #[arg(long, default_value_t = 1)]
    pub video_stride: usize,
    /// Most visual tokens (patches, row markers, frame separators) in the sequence.
    #[arg(long, default_value_t = DEFAULT_MAX_VISUAL_TOKENS)]
    pub max_visual_tokens: usize,
}

impl TokenizeArgs {
    /// The sequence builder these arguments describe.
    pub fn builder(&self) -> anyhow::Result<SequenceBuilder> {
        let tokenizer = match &self.tokenizer {
            Some(p) => TextTokenizer::from_file(p)?,
            None => TextTokenizer::builtin().context("training the built-in tokenizer")?,
        };
        let frontend = match self.audio_frontend {
            FrontendArg::Raw => AudioFrontend::Raw {
                window: self.window,
            },
            FrontendArg::Logmel => AudioFrontend::LogMel {
                n_mels: self.n_mels,
                stack: self.stack,
            },
        };
        let builder = SequenceBuilder {
            tokenizer: Arc::new(tokenizer),
            image: ImageConfig {
                patch: self.patch,
                max_height: self.max_height,
                max_width: self.max_width,
            },
            audio: AudioConfig {
                frontend,
                max_seconds: self.max_audio_seconds,
            },
            max_visual_tokens: self.max_visual_tokens,
            video_stride: self.video_stride,
            image_tokens: None,
            audio_slots: crate::fusion::AudioSlots::PerFrame,
        };
        builder.validate()?;
        Ok(builder)
    }

    /// The prompt segments, in the documented order.
    pub fn segments(&self) -> Vec<Segment> {
        let mut segs: Vec<Segment> = Vec::new();
        segs.extend(
            self.image
                .iter()
                .map(|p| Segment::Image(ImageInput::Path(p.clone()))),
        );
        segs.extend(
            self.video
                .iter()
                .map(|p| Segment::Video(vec![ImageInput::Path(p.clone())])),
        );
        segs.extend(
            self.audio
                .iter()
                .map(|p| Segment::Audio(AudioInput::Path(p.clone()))),
        );
        if let Some(t) = &self.text {
            segs.push(Segment::Text(t.clone()));
        }
        if let Some(a) = &self.answer {
            segs.push(Segment::Answer(a.clone()));
        }
        segs
    }
}

/// Builds the sequence and renders it: the readable layout, or JSON with `--json`.
pub fn render(args: &TokenizeArgs) -> anyhow::Result<String> {
    let builder = args.builder()?;
    let seq: MultimodalSequence = builder.build(&args.segments())?;
    if args.json {
        Ok(serde_json::to_string(&seq)?)
    } else {
        Ok(seq.render_layout(&builder.tokenizer))
    }
}

/// Runs `mmlab tokenize`, printing to stdout.
pub fn run(args: &TokenizeArgs) -> anyhow::Result<()> {
    let out = render(args)?;
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: TokenizeArgs,
    }

    #[test]
    fn parses_and_renders_text_only() {
        let cli = Cli::try_parse_from(["t", "--text", "How many circles are there?"]).unwrap();
        let out = render(&cli.args).unwrap();
        assert!(out.starts_with("total tokens:"), "{out}");
        assert!(out.contains("<bos>") && out.contains("<boa>"), "{out}");
    }

    #[test]
    fn frontend_flag_selects_logmel() {
        let cli = Cli::try_parse_from([
            "t",
            "--audio-frontend",
            "logmel",
            "--n-mels",
            "128",
            "--stack",
            "3",
        ])
        .unwrap();
        let b = cli.args.builder().unwrap();
        assert_eq!(b.audio.frame_dim(), 384);
    }

    #[test]
    fn layout_of_image_audio_text_prompt() {
        let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fusion/");
        let image = format!("{fx}fuyu_exact.png");
        let audio = format!("{fx}whisper_short.wav");
        let cli = Cli::try_parse_from([
            "t",
            "--image",
            &image,
            "--audio",
            &audio,
            "--text",
            "Is there a ring in the image?",
            "--patch",
            "30",
        ])
        .unwrap();
        let out = render(&cli.args).unwrap();
        insta::with_settings!({
            snapshot_path => "../../tests/snapshots",
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!("fusion_cli_tokenize_layout", out);
        });
        let json_cli =
            Cli::try_parse_from(["t", "--text", "yes", "--answer", "no", "--json"]).unwrap();
        let seq: MultimodalSequence =
            serde_json::from_str(&render(&json_cli.args).unwrap()).unwrap();
        assert_eq!(seq.counts().targets, 2);
    }

    #[test]
    fn bad_config_is_an_error_not_a_panic() {
        let cli = Cli::try_parse_from(["t", "--patch", "0"]).unwrap();
        let e = cli.args.builder().unwrap_err().to_string();
        assert!(e.contains("image.patch"), "{e}");
    }
}
