//! Bad input gets a clear error that names the file: never a panic, never an unbounded allocation.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::codecs::gif::GifEncoder;
use image::{Delay, Frame, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use mmlab::fusion::audio::{load_audio, load_audio_capped, AudioConfig};
use mmlab::fusion::image::{load_image, ImageConfig};
use mmlab::fusion::sequence::{AudioInput, ImageInput, Segment, SequenceBuilder};
use mmlab::fusion::text::TextTokenizer;
use mmlab::fusion::FusionError;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 9) as u8, (y * 5) as u8, 100]));
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png).unwrap();
    buf.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose IHDR claims `w x h` RGB pixels, with an empty IDAT.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[]);
    chunk(b"IEND", &[]);
    out
}

fn assert_names(e: &FusionError, p: &Path) {
    let msg = e.to_string();
    let name = p.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "error does not name {name}: {msg}");
}

fn builder() -> SequenceBuilder {
    SequenceBuilder::new(
        Arc::new(TextTokenizer::builtin().unwrap()),
        ImageConfig {
            patch: 4,
            max_height: 64,
            max_width: 64,
        },
        AudioConfig::raw(160),
    )
}

fn wav(dir: &Path, name: &str, rate: u32, samples: &[i16]) -> PathBuf {
    let p = dir.join(name);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&p, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    p
}

#[test]
fn truncated_png() {
    let dir = tempfile::tempdir().unwrap();
    let full = png_bytes(40, 30);
    let p = write(dir.path(), "cut.png", &full[..full.len() / 2]);
    let e = load_image(&p).unwrap_err();
    assert!(matches!(e, FusionError::ImageDecode { .. }), "{e}");
    assert_names(&e, &p);
}

#[test]
fn truncated_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let img = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 3) as u8, (y * 5) as u8, 60]));
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Jpeg).unwrap();
    let full = buf.into_inner();
    let p = write(dir.path(), "cut.jpg", &full[..full.len() / 2]);
    let e = load_image(&p).unwrap_err();
    assert!(matches!(e, FusionError::ImageDecode { .. }), "{e}");
    assert_names(&e, &p);
}

#[test]
fn zero_size_image() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "zero.png", &png_header_only(0, 10));
    let e = load_image(&p).unwrap_err();
    assert!(
        matches!(
            e,
            FusionError::ImageDecode { .. } | FusionError::ImageEmpty { .. }
        ),
        "{e}"
    );
    assert_names(&e, &p);
    // An in-memory image with no pixels is refused by the builder.
    let e = builder()
        .build(&[Segment::Image(ImageInput::Image(RgbImage::new(0, 0)))])
        .unwrap_err();
    assert!(matches!(e, FusionError::ImageEmpty { .. }), "{e}");
}

#[test]
fn huge_header_hits_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "huge.png", &png_header_only(100_000, 100_000));
    let e = load_image(&p).unwrap_err();
    assert!(matches!(e, FusionError::ImageTooLarge { .. }), "{e}");
    assert_names(&e, &p);
}

#[test]
fn missing_and_unknown_image_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.png");
    let e = load_image(&missing).unwrap_err();
    assert!(matches!(e, FusionError::Io { .. }), "{e}");
    assert_names(&e, &missing);
    let p = write(dir.path(), "notes.png", b"just some text, not an image");
    let e = load_image(&p).unwrap_err();
    assert!(matches!(e, FusionError::ImageDecode { .. }), "{e}");
    assert_names(&e, &p);
}

#[test]
fn unsupported_audio() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "song.wav",
        b"this is not audio at all, just text bytes",
    );
    let e = load_audio(&p).unwrap_err();
    assert!(matches!(e, FusionError::AudioUnsupported { .. }), "{e}");
    assert_names(&e, &p);
}

#[test]
fn corrupt_audio() {
    let dir = tempfile::tempdir().unwrap();
    // A FLAC signature followed by garbage metadata.
    let mut bytes = b"fLaC".to_vec();
    bytes.extend((0..200u32).map(|i| (i.wrapping_mul(97) ^ 0x5A) as u8));
    let p = write(dir.path(), "broken.flac", &bytes);
    let e = load_audio(&p).unwrap_err();
    assert!(
        matches!(
            e,
            FusionError::AudioDecode { .. } | FusionError::AudioUnsupported { .. }
        ),
        "{e}"
    );
    assert_names(&e, &p);
    // A WAV whose format tag names no known codec.
    let good = std::fs::read(wav(dir.path(), "ok.wav", 16_000, &[1, 2, 3, 4])).unwrap();
    let mut bad = good.clone();
    bad[20] = 0x99; // wFormatTag
    bad[21] = 0x99;
    let p = write(dir.path(), "badcodec.wav", &bad);
    let e = load_audio(&p).unwrap_err();
    assert!(
        matches!(
            e,
            FusionError::AudioDecode { .. } | FusionError::AudioUnsupported { .. }
        ),
        "{e}"
    );
    assert_names(&e, &p);
}

#[test]
fn empty_audio() {
    let dir = tempfile::tempdir().unwrap();
    let p = wav(dir.path(), "silence.wav", 16_000, &[]);
    let e = load_audio(&p).unwrap_err();
    assert!(matches!(e, FusionError::AudioEmpty { .. }), "{e}");
    assert_names(&e, &p);
    let e = builder()
        .build(&[Segment::Audio(AudioInput::Samples(vec![]))])
        .unwrap_err();
    assert!(matches!(e, FusionError::AudioEmpty { .. }), "{e}");
}

#[test]
fn audio_over_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let three_s: Vec<i16> = (0..24_000).map(|i| ((i % 50) * 100) as i16).collect();
    let p = wav(dir.path(), "long.wav", 8_000, &three_s);
    let e = load_audio_capped(&p, 2.0).unwrap_err();
    assert!(matches!(e, FusionError::AudioTooLong { .. }), "{e}");
    assert_names(&e, &p);
    assert!(e.to_string().contains("max_seconds"), "{e}");
    // Through the builder, with the cap from the config.
    let mut b = builder();
    b.audio.max_seconds = 1.0;
    let e = b
        .build(&[Segment::Audio(AudioInput::Path(p.clone()))])
        .unwrap_err();
    assert!(matches!(e, FusionError::AudioTooLong { .. }), "{e}");
    assert_names(&e, &p);
}

/// A 16-bit PCM WAV built by hand: `rate`, `channels`, the samples, and the RIFF and data
/// size fields as given (`None`: the true sizes).
fn wav_by_hand(
    rate: u32,
    channels: u16,
    samples: &[i16],
    riff_size: Option<u32>,
    data_size: Option<u32>,
) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut b = b"RIFF".to_vec();
    b.extend(riff_size.unwrap_or(36 + data.len() as u32).to_le_bytes());
    b.extend(b"WAVEfmt ");
    b.extend(16u32.to_le_bytes());
    b.extend(1u16.to_le_bytes()); // PCM
    b.extend(channels.to_le_bytes());
    b.extend(rate.to_le_bytes());
    b.extend((rate.wrapping_mul(2 * channels as u32)).to_le_bytes()); // byte rate
    b.extend((2 * channels).to_le_bytes()); // block align
    b.extend(16u16.to_le_bytes());
    b.extend(b"data");
    b.extend(data_size.unwrap_or(data.len() as u32).to_le_bytes());
    b.extend(data);
    b
}

#[test]
fn wav_with_zero_sample_rate_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "zero-rate.wav",
        &wav_by_hand(0, 1, &[1, 2, 3, 4], None, None),
    );
    let e = load_audio(&p).unwrap_err();
    assert!(matches!(e, FusionError::AudioDecode { .. }), "{e}");
    assert_names(&e, &p);
    assert!(e.to_string().contains("sample rate is 0"), "{e}");
    // A rate no recording has (found by fuzzing: 4,294,934,528 Hz made the resampler plan an
    // FFT of gigabytes) is refused before any resampling.
    let p = write(
        dir.path(),
        "huge-rate.wav",
        &wav_by_hand(0xffff_8000, 1, &[1, 2, 3, 4], None, None),
    );
    let e = load_audio(&p).unwrap_err();
    assert_names(&e, &p);
    assert!(
        e.to_string()
            .contains("sample rate 4294934528 Hz is over the limit"),
        "{e}"
    );
    // Zero channels is refused the same way.
    let p = write(
        dir.path(),
        "zero-channels.wav",
        &wav_by_hand(16_000, 0, &[1, 2, 3, 4], None, None),
    );
    let e = load_audio(&p).unwrap_err();
    assert!(e.to_string().contains("channel count is 0"), "{e}");
    assert_names(&e, &p);
}

#[test]
fn streaming_wav_is_read_to_the_real_end() {
    let dir = tempfile::tempdir().unwrap();
    // 2 s of 16 kHz mono as a recorder that never seeks back writes it: RIFF and data sizes
    // are 0xFFFFFFFF, i.e. "134,217 s".
    let samples: Vec<i16> = (0..32_000)
        .map(|i| ((i % 200) * 50 - 5000) as i16)
        .collect();
    let bytes = wav_by_hand(16_000, 1, &samples, Some(u32::MAX), Some(u32::MAX));
    let p = write(dir.path(), "stream.wav", &bytes);
    let got = load_audio(&p).unwrap();
    let want: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
    assert_eq!(got, want);
    // A half-written last frame (stereo, one odd trailing sample byte) is dropped.
    let stereo: Vec<i16> = (0..2 * 1_000).map(|i| (i * 7) as i16).collect();
    let mut bytes = wav_by_hand(16_000, 2, &stereo, Some(u32::MAX), Some(u32::MAX));
    bytes.extend([0x12, 0x34, 0x56]);
    let p = write(dir.path(), "stream-stereo.wav", &bytes);
    let got = load_audio(&p).unwrap();
    assert_eq!(got.len(), 1_000);
    let want: Vec<f32> = stereo
        .chunks(2)
        .map(|c| (c[0] as f32 / 32768.0 + c[1] as f32 / 32768.0) * 0.5)
        .collect();
    assert_eq!(got, want);
    // A streaming file really over the cap is still refused (while decoding).
    let long: Vec<i16> = vec![100; 3 * 8_000];
    let bytes = wav_by_hand(8_000, 1, &long, Some(u32::MAX), Some(u32::MAX));
    let p = write(dir.path(), "stream-long.wav", &bytes);
    let e = load_audio_capped(&p, 2.0).unwrap_err();
    assert!(matches!(e, FusionError::AudioTooLong { .. }), "{e}");
    assert_names(&e, &p);
}

#[test]
fn wav_header_claiming_hours_reads_the_samples_the_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let samples: Vec<i16> = (0..100).map(|i| i * 100).collect();
    // RIFF and data sizes claim 1 GiB of samples (~9 hours at 16 kHz) in a 244-byte file:
    // the data ends where the file does.
    let bytes = wav_by_hand(
        16_000,
        1,
        &samples,
        Some((1u32 << 30) + 36),
        Some(1u32 << 30),
    );
    let p = write(dir.path(), "liar.wav", &bytes);
    let got = load_audio_capped(&p, 30.0).unwrap();
    let want: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
    assert_eq!(got, want);
}

fn gif(dir: &Path, name: &str, n: usize) -> PathBuf {
    let p = dir.join(name);
    let file = std::fs::File::create(&p).unwrap();
    let mut enc = GifEncoder::new(file);
    let frames = (0..n).map(|i| {
        let img = RgbaImage::from_pixel(8, 8, Rgba([(i * 40) as u8, 10, 200, 255]));
        Frame::from_parts(img, 0, 0, Delay::from_numer_denom_ms(100, 1))
    });
    enc.encode_frames(frames).unwrap();
    drop(enc);
    p
}

#[test]
fn animated_gif_video() {
    let dir = tempfile::tempdir().unwrap();
    let p = gif(dir.path(), "clip.gif", 5);
    let mut b = builder();
    b.video_stride = 2;
    let seq = b
        .build(&[Segment::Video(vec![ImageInput::Path(p.clone())])])
        .unwrap();
    let c = seq.counts();
    // Frames 0, 2, 4 of 8x8 with patch 4: 3 x (4 patches + 2 newlines), 2 separators.
    assert_eq!(
        (c.image_patch, c.image_newline, c.video_frame_sep),
        (12, 6, 2)
    );
    // The first patch of frame 2 has red = 80.
    let second = seq.patch_positions[4];
    assert!(seq.tokens[second - 1] == b.tokenizer.specials.frame);
    let red = seq.patches[4 * seq.patch_dim];
    assert!((red - (80.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6, "{red}");

    // The visual cap counts patches, newlines and separators.
    b.video_stride = 1;
    b.max_visual_tokens = 20;
    let e = b
        .build(&[Segment::Video(vec![ImageInput::Path(p.clone())])])
        .unwrap_err();
    assert!(matches!(e, FusionError::TooManyVisualTokens { .. }), "{e}");
    assert_names(&e, &p);

    // A truncated GIF is a decode error naming the file.
    let bytes = std::fs::read(&p).unwrap();
    let cut = write(dir.path(), "cut.gif", &bytes[..bytes.len() / 2]);
    b.max_visual_tokens = 1000;
    let e = b
        .build(&[Segment::Video(vec![ImageInput::Path(cut.clone())])])
        .unwrap_err();
    assert_names(&e, &cut);
}

#[test]
fn tokenizer_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "tokenizer.json", b"{ not json");
    let e = TextTokenizer::from_file(&p).unwrap_err();
    assert!(matches!(e, FusionError::Tokenizer { .. }), "{e}");
    assert_names(&e, &p);
}
