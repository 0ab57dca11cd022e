//! Snapshot tests of the fused layout of text + image + audio prompts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmlab::fusion::audio::AudioConfig;
use mmlab::fusion::image::ImageConfig;
use mmlab::fusion::sequence::{
    AudioInput, ImageInput, MultimodalSequence, Segment, SequenceBuilder,
};
use mmlab::fusion::text::TextTokenizer;
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fusion")
        .join(name)
}

fn builder(audio: AudioConfig) -> SequenceBuilder {
    SequenceBuilder::new(
        Arc::new(TextTokenizer::builtin().unwrap()),
        ImageConfig::fuyu(),
        audio,
    )
}

/// Everything but the float matrices, which the parity tests cover.
fn structure(seq: &MultimodalSequence) -> serde_json::Value {
    json!({
        "tokens": seq.tokens,
        "modality": seq.modality,
        "positions": seq.positions,
        "target_mask": seq.target_mask,
        "patch_dim": seq.patch_dim,
        "patch_positions": seq.patch_positions,
        "n_patch_values": seq.patches.len(),
        "frame_dim": seq.frame_dim,
        "frame_positions": seq.frame_positions,
        "n_frame_values": seq.frames.len(),
    })
}

#[test]
fn text_image_audio_prompt_layout() {
    let b = builder(AudioConfig::logmel(80, 4));
    // 0.5 s of the tone: 50 log-mel frames, 4 per token -> 13 audio tokens.
    let tone = mmlab::fusion::audio::load_audio(&fixture("whisper_tone.wav")).unwrap();
    let seq = b
        .build(&[
            Segment::Image(ImageInput::Path(fixture("fuyu_ragged.png"))),
            Segment::Audio(AudioInput::Samples(tone[..8000].to_vec())),
            Segment::Text("Is there a ring in the image?".into()),
        ])
        .unwrap();
    insta::assert_snapshot!("text_image_audio", seq.render_layout(&b.tokenizer));
    insta::assert_json_snapshot!("text_image_audio_structure", structure(&seq));
}

#[test]
fn training_sample_layout() {
    let b = builder(AudioConfig::raw(320));
    let seq = b
        .build(&[
            Segment::Image(ImageInput::Path(fixture("fuyu_exact.png"))),
            Segment::Text("How many circles are there?".into()),
            Segment::Answer("three".into()),
        ])
        .unwrap();
    insta::assert_snapshot!("training_sample", seq.render_layout(&b.tokenizer));
}

#[test]
fn raw_audio_and_video_layout() {
    let b = builder(AudioConfig::raw(320));
    let seq = b
        .build(&[
            Segment::Video(vec![
                ImageInput::Path(fixture("fuyu_tiny.png")),
                ImageInput::Path(fixture("fuyu_ragged.png")),
            ]),
            Segment::Audio(AudioInput::Path(fixture("whisper_short.wav"))),
            Segment::Text("What happens?".into()),
        ])
        .unwrap();
    insta::assert_snapshot!("video_audio", seq.render_layout(&b.tokenizer));
}
