//! Audio to frame rows: decode, mix to mono, resample to 16 kHz, then raw windows or Whisper log-mel.
//!
//! Two front-ends (see [`AudioFrontend`]):
//! - `raw`: non-overlapping windows of `window` samples, the last one zero-padded;
//!   each window is one frame, embedded linearly by the model.
//! - `logmel`: Whisper's features exactly as transformers' `WhisperFeatureExtractor`
//!   computes them (periodic Hann window, `n_fft` 400, hop 160, centred frames with
//!   reflect padding, power spectrum, Slaney mel filters 0–8 kHz, `log10(max(1e-10, .))`,
//!   the last frame dropped, floor at `max - 8`, then `(x + 4) / 4`), with `stack`
//!   consecutive frames concatenated into one token. The last token is completed with
//!   the clip's floor value (`(max - 8 + 4) / 4`, i.e. "silence") when the frame count is
//!   not a multiple of `stack`. Unlike `WhisperFeatureExtractor`'s default, the clip is
//!   not padded to 30 s (it matches the extractor called with `padding="longest"`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use rubato::{FftFixedInOut, Resampler};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::error::FusionError;

/// Sample rate every front-end works at.
pub const SAMPLE_RATE: u32 = 16_000;
/// Highest source sample rate accepted (the highest rate audio is recorded at): above it,
/// the resampler's FFT plan (its size grows with `rate / gcd(rate, 16000)`) would need
/// gigabytes for a rate a hostile header made up.
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// Whisper's FFT size (25 ms).
pub const N_FFT: usize = 400;
/// Whisper's hop length (10 ms).
pub const HOP: usize = 160;
/// Cap [`load_audio`] applies when no config is at hand (10 minutes).
pub const DEFAULT_MAX_SECONDS: f32 = 600.0;

/// Name used in errors for audio that did not come from a file.
const IN_MEMORY: &str = "<in-memory audio>";

/// How 16 kHz samples become frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AudioFrontend {
    /// Non-overlapping windows of `window` samples (320 = 20 ms), one frame each.
    Raw {
        /// Samples per frame.
        window: usize,
    },
    /// Whisper log-mel features, `stack` consecutive 10 ms frames per token.
    #[serde(rename = "logmel")]
    LogMel {
        /// Number of mel bins (80 or 128 in Whisper).
        n_mels: usize,
        /// Consecutive frames concatenated into one token.
        stack: usize,
    },
}

/// Audio settings: front-end and a cap on length.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AudioConfig {
    /// The front-end that turns samples into frames.
    pub frontend: AudioFrontend,
    /// Longest accepted audio in seconds.
    pub max_seconds: f32,
}

impl AudioConfig {
    /// Raw windows of `window` samples, 30 s cap.
    pub fn raw(window: usize) -> Self {
        AudioConfig {
            frontend: AudioFrontend::Raw { window },
            max_seconds: 30.0,
        }
    }

    /// Whisper log-mel with `n_mels` bins and `stack` frames per token, 30 s cap.
    pub fn logmel(n_mels: usize, stack: usize) -> Self {
        AudioConfig {
            frontend: AudioFrontend::LogMel { n_mels, stack },
            max_seconds: 30.0,
        }
    }

    /// Length of one frame row: `window` (raw) or `n_mels * stack` (log-mel).
    pub fn frame_dim(&self) -> usize {
        match self.frontend {
            AudioFrontend::Raw { window } => window,
            AudioFrontend::LogMel { n_mels, stack } => n_mels * stack,
        }
    }

    /// Largest number of 16 kHz samples accepted.
    pub fn max_samples(&self) -> usize {
        (self.max_seconds as f64 * SAMPLE_RATE as f64).floor() as usize
    }

    /// Number of frame rows `n_samples` samples at 16 kHz become (0 if too short).
    pub fn n_frames(&self, n_samples: usize) -> usize {
        match self.frontend {
            AudioFrontend::Raw { window } if window > 0 => n_samples.div_ceil(window),
            AudioFrontend::LogMel { stack, .. } if stack > 0 => (n_samples / HOP).div_ceil(stack),
            _ => 0,
        }
    }

    /// Checks that every field is usable.
    pub fn validate(&self) -> Result<(), FusionError> {
        match self.frontend {
            AudioFrontend::Raw { window } => {
                if window == 0 || window > 16_000 {
                    return Err(FusionError::config(
                        "audio.frontend.window",
                        window,
                        "between 1 and 16000 samples",
                    ));
                }
            }
            AudioFrontend::LogMel { n_mels, stack } => {
                if n_mels == 0 || n_mels > 256 {
                    return Err(FusionError::config(
                        "audio.frontend.n_mels",
                        n_mels,
                        "between 1 and 256 mel bins (Whisper uses 80 or 128)",
                    ));
                }
                if stack == 0 || stack > 100 {
                    return Err(FusionError::config(
                        "audio.frontend.stack",
                        stack,
                        "between 1 and 100 frames per token",
                    ));
                }
            }
        }
        if !(self.max_seconds.is_finite() && self.max_seconds > 0.0) {
            return Err(FusionError::config(
                "audio.max_seconds",
                self.max_seconds,
                "a positive number of seconds",
            ));
        }
        Ok(())
    }
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self::raw(320)
    }
}

/// Audio features: `n` frames of `dim` values, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrameMatrix {
    /// Number of frames (tokens).
    pub n: usize,
    /// Values per frame.
    pub dim: usize,
    /// `n x dim` values, row-major.
    pub data: Vec<f32>,
}

impl FrameMatrix {
    /// Frame `i`, if it exists.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.data.get(i * self.dim..(i + 1) * self.dim)
    }
}

/// Decodes an audio file to 16 kHz mono, refusing audio over [`DEFAULT_MAX_SECONDS`].
pub fn load_audio(path: &Path) -> Result<Vec<f32>, FusionError> {
    load_audio_capped(path, DEFAULT_MAX_SECONDS)
}

/// Decodes an audio file (WAV, FLAC, MP3, OGG/Vorbis) to 16 kHz mono, refusing audio over `max_seconds`.
///
/// Channels are averaged; other rates are resampled with `rubato`'s FFT resampler.
/// Decoding stops as soon as the cap is crossed, so memory stays bounded.
pub fn load_audio_capped(path: &Path, max_seconds: f32) -> Result<Vec<f32>, FusionError> {
    let (samples, rate) = decode_mono(path, max_seconds)?;
    if samples.is_empty() {
        return Err(FusionError::AudioEmpty {
            path: path.to_path_buf(),
        });
    }
    if rate == SAMPLE_RATE {
        return Ok(samples);
    }
    let out = resample(&samples, rate, SAMPLE_RATE).map_err(|detail| FusionError::Resample {
        path: path.to_path_buf(),
        from_hz: rate,
        detail,
    })?;
    // Rounding in the resampled length may add a sample or two; the cap was checked at the source rate.
    Ok(out)
}

/// Decodes `path` to mono at its own sample rate, stopping with an error past `max_seconds`.
fn decode_mono(path: &Path, max_seconds: f32) -> Result<(Vec<f32>, u32), FusionError> {
    let pb = || path.to_path_buf();
    let decode_err = |e: SymError| match e {
        SymError::Unsupported(what) => FusionError::AudioUnsupported {
            path: pb(),
            detail: what.to_string(),
        },
        other => FusionError::AudioDecode {
            path: pb(),
            detail: other.to_string(),
        },
    };
    let mut file = File::open(path).map_err(|source| FusionError::Io { path: pb(), source })?;
    // WAV headers are checked here first: symphonia panics on a zero sample rate, and
    // trusts a streaming file's placeholder sizes (0xFFFFFFFF) as its real length.
    let patches = match wav_header_patches(&mut file) {
        Ok(p) => p,
        Err(WavHeaderError::Io(source)) => return Err(FusionError::Io { path: pb(), source }),
        Err(WavHeaderError::Invalid(detail)) => {
            return Err(FusionError::AudioDecode { path: pb(), detail })
        }
    };
    let source: Box<dyn MediaSource> = if patches.is_empty() {
        Box::new(file)
    } else {
        Box::new(
            PatchedFile::new(file, patches)
                .map_err(|source| FusionError::Io { path: pb(), source })?,
        )
    };
    let mss = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::Unsupported(_) => FusionError::AudioUnsupported {
                path: pb(),
                detail: "not a WAV, FLAC, MP3 or OGG/Vorbis file".into(),
            },
            other => decode_err(other),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| FusionError::AudioUnsupported {
            path: pb(),
            detail: "no audio track".into(),
        })?;
    let track_id = track.id;
    let rate = track
        .codec_params
        .sample_rate
        .ok_or_else(|| FusionError::AudioDecode {
            path: pb(),
            detail: "stream does not state its sample rate".into(),
        })?;
    if rate == 0 {
        return Err(FusionError::AudioDecode {
            path: pb(),
            detail: "sample rate is 0".into(),
        });
    }
    if rate > MAX_SAMPLE_RATE {
        return Err(FusionError::AudioDecode {
            path: pb(),
            detail: format!("sample rate {rate} Hz is over the limit of {MAX_SAMPLE_RATE} Hz"),
        });
    }
    let max_frames = (max_seconds as f64 * rate as f64).floor() as u64;
    let too_long = |frames: u64| FusionError::AudioTooLong {
        path: pb(),
        seconds: (frames as f64 / rate as f64) as f32,
        max_seconds,
    };
    if let Some(n) = track.codec_params.n_frames {
        if n > max_frames {
            return Err(too_long(n));
        }
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(decode_err)?;
    let mut mono: Vec<f32> = Vec::new();
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => return Err(decode_err(e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = decoder.decode(&packet).map_err(decode_err)?;
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let frames = decoded.frames();
        if frames == 0 {
            continue;
        }
        if mono.len() as u64 + frames as u64 > max_frames {
            return Err(too_long(mono.len() as u64 + frames as u64));
        }
        let sb = match &mut buf {
            Some(b) if b.capacity() >= decoded.capacity() * channels => b,
            _ => buf.insert(SampleBuffer::<f32>::new(decoded.capacity() as u64, spec)),
        };
        sb.copy_interleaved_ref(decoded);
        let inv = 1.0 / channels as f32;
        mono.extend(
            sb.samples()
                .chunks_exact(channels)
                .map(|fr| fr.iter().sum::<f32>() * inv),
        );
    }
    Ok((mono, rate))
}

/// A WAV header that cannot describe playable audio.
#[derive(Debug)]
enum WavHeaderError {
    /// Reading the header failed.
    Io(std::io::Error),
    /// The header is inconsistent (the message says which field).
    Invalid(String),
}

impl From<std::io::Error> for WavHeaderError {
    fn from(e: std::io::Error) -> Self {
        WavHeaderError::Io(e)
    }
}

/// Size fields streaming recorders leave unset (they cannot seek back to fill them in).
const WAV_UNKNOWN_SIZE: u32 = u32::MAX;

/// Checks a RIFF/WAVE header up to its `data` chunk and returns the size fields to rewrite.
///
/// Errors on a zero sample rate, zero channels or a zero block size in `fmt `. A `data`
/// chunk that claims more bytes than the file holds (a streaming file's `0xFFFFFFFF`, or a
/// recording cut short) is given its real length, whole frames only, and the RIFF size is
/// made to match, so the decoder reads to the real end of the file. Returns no patches for
/// files that are not WAV (symphonia probes those) or whose sizes are right.
fn wav_header_patches(file: &mut File) -> Result<Vec<(u64, [u8; 4])>, WavHeaderError> {
    use std::io::{Read, Seek, SeekFrom};
    let file_len = file.metadata()?.len();
    let mut head = [0u8; 12];
    let n = file.read(&mut head)?;
    file.seek(SeekFrom::Start(0))?;
    if n < 12 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Ok(Vec::new());
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let riff_len = u32_at(&head, 4);
    let mut pos: u64 = 12;
    let mut block_align: Option<u64> = None;
    let mut result = Ok(Vec::new());
    while pos + 8 <= file_len {
        let mut ch = [0u8; 8];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut ch)?;
        let len = u32_at(&ch, 4);
        let body = pos + 8;
        match &ch[0..4] {
            b"fmt " => {
                if len < 16 || body + 16 > file_len {
                    result = Err(WavHeaderError::Invalid(format!(
                        "WAV fmt chunk is {len} bytes, shorter than the 16 a format needs"
                    )));
                    break;
                }
                let mut fmt = [0u8; 16];
                file.read_exact(&mut fmt)?;
                let (channels, rate, align) = (u16_at(&fmt, 2), u32_at(&fmt, 4), u16_at(&fmt, 12));
                let bad = |what: &str| {
                    Err(WavHeaderError::Invalid(format!(
                        "the WAV header's {what} is 0 (fmt chunk at byte {pos})"
                    )))
                };
                if rate == 0 {
                    result = bad("sample rate");
                    break;
                }
                if channels == 0 {
                    result = bad("channel count");
                    break;
                }
                if align == 0 {
                    result = bad("block size (block_align)");
                    break;
                }
                block_align = Some(u64::from(align));
            }
            b"data" => {
                let real = file_len - body;
                if u64::from(len) > real {
                    // Whole blocks only; a header without fmt is left to symphonia to refuse.
                    let whole = block_align.map_or(real, |a| real - real % a);
                    let data_len = u32::try_from(whole).unwrap_or(u32::MAX - 1);
                    let riff =
                        u32::try_from(body - 8 + u64::from(data_len)).unwrap_or(u32::MAX - 1);
                    let mut patches = vec![(pos + 4, data_len.to_le_bytes())];
                    if riff_len == WAV_UNKNOWN_SIZE || u64::from(riff_len) > file_len - 8 {
                        patches.push((4, riff.to_le_bytes()));
                    }
                    result = Ok(patches);
                }
                break;
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body + u64::from(len) + u64::from(len % 2);
    }
    file.seek(SeekFrom::Start(0))?;
    result
}

/// A file read with a few 4-byte fields overwritten (the fixed WAV sizes).
struct PatchedFile {
    file: File,
    len: u64,
    patches: Vec<(u64, [u8; 4])>,
}

impl PatchedFile {
    fn new(file: File, patches: Vec<(u64, [u8; 4])>) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(PatchedFile { file, len, patches })
    }
}

impl std::io::Read for PatchedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Seek;
        let start = self.file.stream_position()?;
        let n = self.file.read(buf)?;
        for (at, bytes) in &self.patches {
            for (k, &b) in bytes.iter().enumerate() {
                let p = at + k as u64;
                if p >= start && p < start + n as u64 {
                    buf[(p - start) as usize] = b;
                }
            }
        }
        Ok(n)
    }
}

impl std::io::Seek for PatchedFile {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.file.seek(to)
    }
}

impl MediaSource for PatchedFile {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}

/// Resamples mono `samples` from `from_hz` to `to_hz` with `rubato`'s synchronous FFT resampler.
///
/// The resampler's delay is removed, so the output is aligned with the input and has
/// `ceil(len * to_hz / from_hz)` samples.
pub fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, String> {
    if from_hz == to_hz {
        return Ok(samples.to_vec());
    }
    if from_hz == 0 || to_hz == 0 || from_hz > MAX_SAMPLE_RATE || to_hz > MAX_SAMPLE_RATE {
        return Err(format!(
            "invalid sample rates {from_hz} -> {to_hz} (each must be in 1..={MAX_SAMPLE_RATE} Hz)"
        ));
    }
    let expected = (samples.len() as u64 * to_hz as u64).div_ceil(from_hz as u64) as usize;
    // rubato's FFT resampler works on chunks of `k * from / gcd` samples and reports a
    // delay of half a chunk; with an odd chunk the real delay is half an input sample
    // less, so use an even number `k` of minimal chunks (about 1024 samples).
    let min_chunk = (from_hz / gcd(from_hz, to_hz)) as usize;
    let chunks = 1024usize.div_ceil(min_chunk).max(2).next_multiple_of(2);
    let mut rs = FftFixedInOut::<f32>::new(from_hz as usize, to_hz as usize, chunks * min_chunk, 1)
        .map_err(|e| e.to_string())?;
    let delay = rs.output_delay();
    let mut out: Vec<f32> = Vec::with_capacity(expected + delay + rs.output_frames_max());
    let mut pos = 0;
    while samples.len() - pos >= rs.input_frames_next() {
        let n = rs.input_frames_next();
        let chunk = rs
            .process(&[&samples[pos..pos + n]], None)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&chunk[0]);
        pos += n;
    }
    if pos < samples.len() {
        let chunk = rs
            .process_partial(Some(&[&samples[pos..]]), None)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&chunk[0]);
    }
    while out.len() < delay + expected {
        let chunk = rs
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| e.to_string())?;
        if chunk[0].is_empty() {
            return Err("resampler produced no output while flushing".into());
        }
        out.extend_from_slice(&chunk[0]);
    }
    Ok(out[delay..delay + expected].to_vec())
}

/// Greatest common divisor.
fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Turns 16 kHz mono samples into frame rows with the configured front-end.
///
/// Errors on an invalid config, empty audio, audio over `cfg.max_seconds`, non-finite
/// samples, or (log-mel) audio shorter than one hop.
pub fn audio_features(samples: &[f32], cfg: &AudioConfig) -> Result<FrameMatrix, FusionError> {
    audio_features_named(samples, cfg, Path::new(IN_MEMORY))
}

/// [`audio_features`] with errors naming `name` (the file the samples came from).
pub fn audio_features_named(
    samples: &[f32],
    cfg: &AudioConfig,
    name: &Path,
) -> Result<FrameMatrix, FusionError> {
    cfg.validate()?;
    if samples.is_empty() {
        return Err(FusionError::AudioEmpty {
            path: name.to_path_buf(),
        });
    }
    if samples.len() > cfg.max_samples() {
        return Err(FusionError::AudioTooLong {
            path: name.to_path_buf(),
            seconds: samples.len() as f32 / SAMPLE_RATE as f32,
            max_seconds: cfg.max_seconds,
        });
    }
    if samples.iter().any(|s| !s.is_finite()) {
        return Err(FusionError::AudioDecode {
            path: name.to_path_buf(),
            detail: "samples contain NaN or infinity".into(),
        });
    }
    match cfg.frontend {
        AudioFrontend::Raw { window } => Ok(raw_frames(samples, window)),
        AudioFrontend::LogMel { n_mels, stack } => {
            if samples.len() < HOP {
                return Err(FusionError::AudioTooShort {
                    path: name.to_path_buf(),
                    samples: samples.len(),
                    min_samples: HOP,
                });
            }
            let mel = LogMel::new(n_mels).compute(samples);
            Ok(stack_frames(&mel, stack))
        }
    }
}

/// Cuts samples into non-overlapping windows of `window` samples, zero-padding the last one.
pub fn raw_frames(samples: &[f32], window: usize) -> FrameMatrix {
    if window == 0 {
        return FrameMatrix::default();
    }
    let n = samples.len().div_ceil(window);
    let mut data = vec![0f32; n * window];
    data[..samples.len()].copy_from_slice(samples);
    FrameMatrix {
        n,
        dim: window,
        data,
    }
}

/// Concatenates `stack` consecutive rows of `m` into one, completing the last row with the minimum of `m`.
pub fn stack_frames(m: &FrameMatrix, stack: usize) -> FrameMatrix {
    if stack <= 1 || m.n == 0 {
        return m.clone();
    }
    let n = m.n.div_ceil(stack);
    let floor = m.data.iter().copied().fold(f32::INFINITY, f32::min);
    let mut data = vec![floor; n * m.dim * stack];
    data[..m.data.len()].copy_from_slice(&m.data);
    FrameMatrix {
        n,
        dim: m.dim * stack,
        data,
    }
}

/// Slaney mel scale, as `transformers.audio_utils.hertz_to_mel(..., "slaney")`.
pub fn hertz_to_mel(freq: f64) -> f64 {
    let logstep = 27.0 / 6.4f64.ln();
    if freq >= 1000.0 {
        15.0 + (freq / 1000.0).ln() * logstep
    } else {
        3.0 * freq / 200.0
    }
}

/// Inverse of [`hertz_to_mel`].
pub fn mel_to_hertz(mel: f64) -> f64 {
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= 15.0 {
        1000.0 * (logstep * (mel - 15.0)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// `numpy.linspace(start, stop, num)`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// Whisper's mel filter bank, `(N_FFT/2 + 1) x n_mels` row-major, Slaney scale and norm, 0–8 kHz.
pub fn mel_filter_bank(n_mels: usize) -> Vec<f64> {
    let n_bins = N_FFT / 2 + 1;
    let mel_min = hertz_to_mel(0.0);
    let mel_max = hertz_to_mel(8000.0);
    let filter_freqs: Vec<f64> = linspace(mel_min, mel_max, n_mels + 2)
        .into_iter()
        .map(mel_to_hertz)
        .collect();
    let fft_freqs = linspace(0.0, (SAMPLE_RATE / 2) as f64, n_bins);
    let diff: Vec<f64> = filter_freqs.windows(2).map(|w| w[1] - w[0]).collect();
    let mut fb = vec![0f64; n_bins * n_mels];
    for (i, &f) in fft_freqs.iter().enumerate() {
        for j in 0..n_mels {
            let down = -(filter_freqs[j] - f) / diff[j];
            let up = (filter_freqs[j + 2] - f) / diff[j + 1];
            let enorm = 2.0 / (filter_freqs[j + 2] - filter_freqs[j]);
            fb[i * n_mels + j] = 0f64.max(down.min(up)) * enorm;
        }
    }
    fb
}

/// One mel filter as a contiguous run of non-zero weights.
#[derive(Clone, Debug)]
struct SparseFilter {
    start: usize,
    weights: Vec<f32>,
}

/// Frames computed together: their power spectra are laid out bin-major, one lane per frame,
/// so the mel weights and the log apply to all of them at once (8 f32 lanes of AVX).
const BLOCK: usize = 8;

/// A reusable Whisper log-mel extractor for one number of mel bins.
///
/// Two real frames go through one complex FFT (the first as the real part, the second as the
/// imaginary part) and are told apart by the spectrum's symmetry; `BLOCK` frames share one
/// call into the FFT, one pass over the mel filters and one vectorised log.
#[derive(Clone)]
pub struct LogMel {
    n_mels: usize,
    filters: Vec<SparseFilter>,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel")
            .field("n_mels", &self.n_mels)
            .finish()
    }
}

impl LogMel {
    /// Plans the FFT and builds the filter bank for `n_mels` bins.
    pub fn new(n_mels: usize) -> Self {
        let n_bins = N_FFT / 2 + 1;
        let fb = mel_filter_bank(n_mels);
        let filters = (0..n_mels)
            .map(|j| {
                let col: Vec<f64> = (0..n_bins).map(|i| fb[i * n_mels + j]).collect();
                let start = col.iter().position(|&w| w != 0.0).unwrap_or(0);
                let end = col.iter().rposition(|&w| w != 0.0).map_or(start, |e| e + 1);
                SparseFilter {
                    start,
                    weights: col[start..end].iter().map(|&w| w as f32).collect(),
                }
            })
            .collect();
        // Periodic Hann: numpy.hanning(N_FFT + 1)[:-1].
        let window = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let fft = FftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        LogMel {
            n_mels,
            filters,
            window,
            fft,
        }
    }

    /// Number of mel bins.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Log-mel frames of 16 kHz `samples`: `len / 160` rows of `n_mels` values (time-major).
    ///
    /// Empty when `samples` is shorter than one hop.
    pub fn compute(&self, samples: &[f32]) -> FrameMatrix {
        let len = samples.len();
        let n_frames = len / HOP; // 1 + len / HOP centred frames, the last one dropped.
        let n_mels = self.n_mels;
        if n_frames == 0 {
            return FrameMatrix {
                n: 0,
                dim: n_mels,
                data: Vec::new(),
            };
        }
        // Pass 1: log10(max(1e-10, mel energy)), energies in f32 as the torch STFT path computes
        // them; blocks of frames split across threads. Each task returns its largest log.
        let mut data = vec![0f32; n_frames * n_mels];
        let chunk =
            (n_frames.div_ceil(rayon::current_num_threads() * 4).max(64)).next_multiple_of(BLOCK);
        let max_log = data
            .par_chunks_mut(chunk * n_mels)
            .enumerate()
            .map(|(ci, out)| self.log_mel_energies(samples, ci * chunk, out))
            .reduce(|| -10.0f32, f32::max);
        // Pass 2, in place: floored at max - 8, then (x + 4) / 4. The log is monotonic, so the
        // largest log is the log of the largest energy. f32 is ample here: the log of an f32
        // energy is within 1e-7 of the f64 one.
        let floor = max_log - 8.0;
        data.par_chunks_mut(chunk * n_mels).for_each(|d| {
            for v in d.iter_mut() {
                *v = (v.max(floor) + 4.0) * 0.25;
            }
        });
        FrameMatrix {
            n: n_frames,
            dim: n_mels,
            data,
        }
    }

    /// The `N_FFT` samples of frame `frame` (reflect-padded at both ends, as numpy does): a
    /// slice of `samples` when the frame lies inside, else written into `tmp`.
    #[inline(always)]
    fn frame_samples<'a>(&self, samples: &'a [f32], frame: usize, tmp: &'a mut [f32]) -> &'a [f32] {
        let len = samples.len();
        let start = (frame * HOP) as isize - (N_FFT / 2) as isize;
        if start >= 0 && start as usize + N_FFT <= len {
            let s = start as usize;
            &samples[s..s + N_FFT]
        } else {
            for (j, t) in tmp.iter_mut().enumerate() {
                *t = samples[reflect(start + j as isize, len)];
            }
            tmp
        }
    }

    /// `log10(max(1e-10, e))` of the mel energies `e` of the frames starting at `first`, into
    /// `out` (whole frames of `n_mels`); returns the largest value written. Compiled twice:
    /// for AVX2 + FMA, taken when the CPU has them, and for the build's baseline.
    fn log_mel_energies(&self, samples: &[f32], first: usize, out: &mut [f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { self.log_mel_energies_avx2(samples, first, out) };
        }
        self.log_mel_energies_in(samples, first, out)
    }

    /// [`Self::log_mel_energies`] compiled with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn log_mel_energies_avx2(&self, samples: &[f32], first: usize, out: &mut [f32]) -> f32 {
        self.log_mel_energies_in(samples, first, out)
    }

    #[inline(always)]
    fn log_mel_energies_in(&self, samples: &[f32], first: usize, out: &mut [f32]) -> f32 {
        let n_mels = self.n_mels;
        let n_bins = N_FFT / 2 + 1;
        let frames = out.len() / n_mels;
        let mut buf = vec![Complex32::default(); N_FFT * BLOCK / 2];
        let mut scratch = vec![Complex32::default(); self.fft.get_inplace_scratch_len()];
        let (mut tmp_a, mut tmp_b) = (vec![0f32; N_FFT], vec![0f32; N_FFT]);
        let zeros = vec![0f32; N_FFT];
        // power[bin * BLOCK + lane]: the block's power spectra, bin-major.
        let mut power = vec![0f32; n_bins * BLOCK];
        // Lane-wise largest log. Missing frames of a short last block have zero energy, whose
        // log (-10) is the starting value, so all lanes can take part.
        let mut max_log = [-10.0f32; BLOCK];
        for b0 in (0..frames).step_by(BLOCK) {
            let nb = (frames - b0).min(BLOCK);
            // Frames 2p and 2p + 1 of the block share FFT p as its real and imaginary parts;
            // missing frames are zeros.
            for (p, z) in buf.chunks_exact_mut(N_FFT).enumerate() {
                let frame = |lane: usize, tmp| {
                    if lane < nb {
                        self.frame_samples(samples, first + b0 + lane, tmp)
                    } else {
                        &zeros[..]
                    }
                };
                let a = frame(2 * p, &mut tmp_a);
                let b = frame(2 * p + 1, &mut tmp_b);
                for (((c, &x), &y), &w) in z.iter_mut().zip(a).zip(b).zip(&self.window) {
                    *c = Complex32::new(x * w, y * w);
                }
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            // Z = A + iB for real A, B: A[k] = (Z[k] + conj Z[N-k]) / 2, B[k] = (Z[k] - conj
            // Z[N-k]) / 2i, so |A[k]|^2 = ((a+c)^2 + (b-d)^2) / 4 and |B[k]|^2 = ((a-c)^2 +
            // (b+d)^2) / 4 for Z[k] = a + ib, Z[N-k] = c + id.
            for (p, z) in buf.chunks_exact(N_FFT).enumerate() {
                for (k, bin) in power.chunks_exact_mut(BLOCK).enumerate() {
                    let (zk, zn) = (z[k], z[if k == 0 { 0 } else { N_FFT - k }]);
                    let (s_re, d_im) = (zk.re + zn.re, zk.im - zn.im);
                    let (d_re, s_im) = (zk.re - zn.re, zk.im + zn.im);
                    bin[2 * p] = 0.25 * (s_re * s_re + d_im * d_im);
                    bin[2 * p + 1] = 0.25 * (d_re * d_re + s_im * s_im);
                }
            }
            for (j, f) in self.filters.iter().enumerate() {
                let mut acc = [0f32; BLOCK];
                for (&w, bin) in f
                    .weights
                    .iter()
                    .zip(power[f.start * BLOCK..].chunks_exact(BLOCK))
                {
                    for (a, &p) in acc.iter_mut().zip(bin) {
                        *a += w * p;
                    }
                }
                for (a, m) in acc.iter_mut().zip(max_log.iter_mut()) {
                    *a = fast_log10_f32(if *a > 1e-10 { *a } else { 1e-10 });
                    *m = if *a > *m { *a } else { *m };
                }
                for (lane, &v) in acc.iter().enumerate().take(nb) {
                    out[(b0 + lane) * n_mels + j] = v;
                }
            }
        }
        max_log.iter().copied().fold(-10.0f32, f32::max)
    }
}

/// `log10(x)` for positive normal `x`, within 2e-6 for x up to 1e8 (f32 rounding; a branch-free series that vectorises).
#[inline(always)]
pub fn fast_log10_f32(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // Move m from [1, 2) to [sqrt(1/2), sqrt(2)) so the series converges fast.
    let big = m > std::f32::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = e + big as i32;
    // ln(m) = 2 atanh(t), t = (m - 1) / (m + 1), |t| <= 0.172.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let p = 1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0))));
    (e as f32 * std::f32::consts::LN_2 + 2.0 * t * p) * std::f32::consts::LOG10_E
}

/// `numpy.pad(mode="reflect")` index: maps any `i` onto `0..len` by mirroring without repeating the edge.
fn reflect(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let m = i.rem_euclid(period);
    if m < len as isize {
        m as usize
    } else {
        (period - m) as usize
    }
}

/// Name errors use for in-memory audio.
pub(crate) fn in_memory_name() -> PathBuf {
    PathBuf::from(IN_MEMORY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_numpy() {
        // np.pad([0,1,2,3], 3, mode="reflect") -> [3,2,1,0,1,2,3,2,1,0]
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn fast_log10_matches_std() {
        let mut x = 1e-10f32;
        let mut worst = 0f64;
        while x < 1e8 {
            let (a, b) = (fast_log10_f32(x) as f64, (x as f64).log10());
            worst = worst.max((a - b).abs());
            x *= 1.0173;
        }
        assert!(worst < 2e-6, "worst |error| {worst}");
        assert_eq!(fast_log10_f32(1.0), 0.0);
    }

    #[test]
    fn mel_scale_round_trips() {
        for f in [0.0, 300.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hertz(hertz_to_mel(f)) - f).abs() < 1e-9);
        }
        assert!((hertz_to_mel(1000.0) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn filters_are_triangles_with_slaney_area() {
        let fb = mel_filter_bank(80);
        // Every filter has some weight and no negative weights.
        for j in 0..80 {
            let col: Vec<f64> = (0..201).map(|i| fb[i * 80 + j]).collect();
            assert!(col.iter().all(|&w| w >= 0.0));
            assert!(col.iter().any(|&w| w > 0.0), "filter {j} is empty");
        }
    }

    #[test]
    fn raw_frames_pad_the_last_window() {
        let s: Vec<f32> = (0..7).map(|i| i as f32).collect();
        let m = raw_frames(&s, 3);
        assert_eq!((m.n, m.dim), (3, 3));
        assert_eq!(m.row(2).unwrap(), &[6.0, 0.0, 0.0]);
    }

    #[test]
    fn stacking_concatenates_and_fills_with_floor() {
        let m = FrameMatrix {
            n: 3,
            dim: 2,
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 0.5],
        };
        let s = stack_frames(&m, 2);
        assert_eq!((s.n, s.dim), (2, 4));
        assert_eq!(s.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn logmel_frame_count_and_range() {
        let s: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin())
            .collect();
        let m = LogMel::new(80).compute(&s);
        assert_eq!((m.n, m.dim), (100, 80));
        let max = m.data.iter().copied().fold(f32::MIN, f32::max);
        let min = m.data.iter().copied().fold(f32::MAX, f32::min);
        assert!(
            max - min <= 2.0 + 1e-6,
            "floor at max - 8 on the log10 scale"
        );
    }

    /// Whisper log-mel by the book, in f64: a naive DFT per frame, dense filter bank.
    fn logmel_naive(samples: &[f32], n_mels: usize) -> Vec<f64> {
        let fb = mel_filter_bank(n_mels);
        let n_bins = N_FFT / 2 + 1;
        let frames = samples.len() / HOP;
        let mut out = Vec::with_capacity(frames * n_mels);
        for f in 0..frames {
            let start = (f * HOP) as isize - (N_FFT / 2) as isize;
            let x: Vec<f64> = (0..N_FFT)
                .map(|j| {
                    let w =
                        0.5 - 0.5 * (2.0 * std::f64::consts::PI * j as f64 / N_FFT as f64).cos();
                    samples[reflect(start + j as isize, samples.len())] as f64 * w
                })
                .collect();
            let power: Vec<f64> = (0..n_bins)
                .map(|k| {
                    let (mut re, mut im) = (0f64, 0f64);
                    for (j, &v) in x.iter().enumerate() {
                        let a = -2.0 * std::f64::consts::PI * (k * j) as f64 / N_FFT as f64;
                        re += v * a.cos();
                        im += v * a.sin();
                    }
                    re * re + im * im
                })
                .collect();
            for m in 0..n_mels {
                let e: f64 = (0..n_bins).map(|k| fb[k * n_mels + m] * power[k]).sum();
                out.push(e.max(1e-10).log10());
            }
        }
        let max = out.iter().copied().fold(f64::MIN, f64::max);
        out.iter()
            .map(|&v| (v.max(max - 8.0) + 4.0) / 4.0)
            .collect()
    }

    #[test]
    fn logmel_matches_a_naive_dft_with_loud_and_quiet_neighbours() {
        // 53 frames: six full blocks of 8, then 5 (an odd pair at the end). Loud tone and
        // near silence alternate every 3 frames, so the two frames sharing one complex FFT are
        // often 60 dB apart: the quiet one must not pick up its neighbour's spectrum.
        let n = 53 * HOP + 77;
        let s: Vec<f32> = (0..n)
            .map(|i| {
                let loud = (i / (3 * HOP)).is_multiple_of(2);
                let t = i as f32 / 16_000.0;
                let a = if loud { 0.8 } else { 1e-3 };
                a * (2.0 * std::f32::consts::PI * 1234.5 * t).sin()
                    + 1e-4 * ((i * 7919 % 211) as f32 / 211.0 - 0.5)
            })
            .collect();
        for n_mels in [80, 128] {
            let ours = LogMel::new(n_mels).compute(&s);
            let want = logmel_naive(&s, n_mels);
            assert_eq!(ours.data.len(), want.len());
            let worst = ours
                .data
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (a as f64 - b).abs())
                .fold(0f64, f64::max);
            assert!(worst <= 1e-4, "n_mels {n_mels}: max |diff| {worst:.2e}");
        }
    }

    #[test]
    fn logmel_baseline_and_avx2_paths_agree() {
        // The run-time dispatch takes the AVX2 build on this kind of machine; the baseline
        // build (any other CPU) must give the same energies.
        let s: Vec<f32> = (0..21 * HOP + 5)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.3)
            .collect();
        let mel = LogMel::new(80);
        let (mut a, mut b) = (vec![0f32; 21 * 80], vec![0f32; 21 * 80]);
        let ma = mel.log_mel_energies(&s, 0, &mut a);
        let mb = mel.log_mel_energies_in(&s, 0, &mut b);
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5 && (ma - mb).abs() <= 1e-5,
            "max |diff| {worst}"
        );
    }

    #[test]
    fn resample_keeps_length_tone_and_alignment() {
        for from in [44_100u32, 22_050, 48_000, 8_000, 11_025] {
            let s: Vec<f32> = (0..from as usize)
                .map(|i| {
                    (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / from as f64).sin() as f32
                })
                .collect();
            let out = resample(&s, from, 16_000).unwrap();
            assert_eq!(out.len(), 16_000);
            // The ideal 1 kHz tone at 16 kHz, same phase, away from the edges.
            let err = (1000..15_000)
                .map(|i| {
                    let ideal = (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 16_000.0).sin();
                    (out[i] as f64 - ideal).abs()
                })
                .fold(0.0, f64::max);
            assert!(err < 1e-3, "{from} Hz: max error {err}");
        }
    }

    #[test]
    fn config_validation_names_field() {
        let e = AudioConfig::raw(0).validate().unwrap_err().to_string();
        assert!(e.contains("audio.frontend.window"), "{e}");
        let mut c = AudioConfig::logmel(80, 2);
        c.max_seconds = -1.0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_seconds"));
    }

    #[test]
    fn frontend_serde_shape() {
        let j = serde_json::to_string(&AudioConfig::logmel(80, 4)).unwrap();
        assert_eq!(
            j,
            r#"{"frontend":{"kind":"logmel","n_mels":80,"stack":4},"max_seconds":30.0}"#
        );
    }
}
