//! Sound scenes: synthesised events placed in time over background noise, 16 kHz mono.

use std::f32::consts::TAU;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::rng::{purpose, splitmix64, stream_rng};
use crate::sampling::CategoryPrior;
use crate::vocab::{distinct, tally, SoundClass};

/// Sample rate of every generated clip.
pub const SAMPLE_RATE: u32 = 16_000;

/// Background noise colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseKind {
    /// Flat-spectrum noise.
    White,
    /// Low-passed (darker) noise.
    Pink,
}

/// Configuration of the sound-scene generator (serialisable; stored in manifests).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SoundConfig {
    /// Clip length in seconds.
    pub duration_s: f32,
    /// Fewest events in a clip.
    pub min_events: usize,
    /// Most events in a clip.
    pub max_events: usize,
    /// Largest count the balanced count probe targets.
    pub max_count: usize,
    /// Shortest silence (background only) between two events, in seconds.
    pub min_gap_s: f32,
    /// Lowest and highest background-noise amplitude (RMS-ish, full scale = 1).
    pub noise_level: [f32; 2],
    /// Lowest and highest event peak amplitude.
    pub event_gain: [f32; 2],
    /// Zipf exponent of class frequencies (0 = uniform).
    pub skew: f64,
    /// Probability that an event comes from the clip's co-occurrence theme.
    pub theme_prob: f64,
}

impl Default for SoundConfig {
    fn default() -> Self {
        SoundConfig::short()
    }
}

impl SoundConfig {
    /// 1.5-second clips with 1–4 events: the default for small models.
    pub fn short() -> Self {
        SoundConfig {
            duration_s: 1.5,
            min_events: 1,
            max_events: 4,
            max_count: 4,
            min_gap_s: 0.06,
            noise_level: [0.004, 0.02],
            event_gain: [0.3, 0.6],
            skew: 0.8,
            theme_prob: 0.7,
        }
    }

    /// 3-second clips with 1–6 events.
    pub fn long() -> Self {
        SoundConfig {
            duration_s: 3.0,
            max_events: 6,
            max_count: 6,
            ..SoundConfig::short()
        }
    }

    /// Named presets: `short`, `long`.
    pub fn preset(name: &str) -> Option<SoundConfig> {
        match name {
            "short" => Some(SoundConfig::short()),
            "long" => Some(SoundConfig::long()),
            _ => None,
        }
    }

    /// Number of samples in one clip.
    pub fn num_samples(&self) -> usize {
        (self.duration_s.max(0.0) * SAMPLE_RATE as f32).round() as usize
    }

    /// Largest count the count probe targets.
    pub fn effective_max_count(&self) -> usize {
        self.max_count.min(self.max_events)
    }

    /// Checks every field; the error names the field and what was wrong.
    pub fn validate(&self) -> Result<()> {
        if !(self.duration_s.is_finite() && (0.25..=60.0).contains(&self.duration_s)) {
            return Err(DatasetError::config(
                "duration_s",
                format!("{} is not within 0.25..=60 seconds", self.duration_s),
            ));
        }
        if self.max_events == 0 || self.min_events > self.max_events {
            return Err(DatasetError::config(
                "min_events/max_events",
                format!(
                    "need 1 <= max_events and min_events <= max_events (got {}..={})",
                    self.min_events, self.max_events
                ),
            ));
        }
        let longest = SoundClass::ALL
            .iter()
            .map(|c| class_duration(*c).1)
            .fold(0.0f32, f32::max);
        let need = self.max_events as f32 * (longest + self.min_gap_s) + 0.04;
        if need > self.duration_s {
            return Err(DatasetError::config(
                "max_events",
                format!(
                    "{} events need up to {need:.2} s but clips last {} s",
                    self.max_events, self.duration_s
                ),
            ));
        }
        if !(self.min_gap_s.is_finite() && self.min_gap_s >= 0.0) {
            return Err(DatasetError::config(
                "min_gap_s",
                "must be a finite number >= 0",
            ));
        }
        for (name, [lo, hi]) in [
            ("noise_level", self.noise_level),
            ("event_gain", self.event_gain),
        ] {
            if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= 1.0) {
                return Err(DatasetError::config(
                    name,
                    format!("[{lo}, {hi}] must satisfy 0 <= low <= high <= 1"),
                ));
            }
        }
        if !(self.skew.is_finite() && self.skew >= 0.0) {
            return Err(DatasetError::config("skew", "must be a finite number >= 0"));
        }
        if !(self.theme_prob.is_finite() && (0.0..=1.0).contains(&self.theme_prob)) {
            return Err(DatasetError::config("theme_prob", "must be within 0..=1"));
        }
        Ok(())
    }

    fn prior(&self) -> CategoryPrior {
        CategoryPrior::of::<SoundClass>(self.skew, self.theme_prob)
    }
}

/// Shortest and longest duration of each class, in seconds.
pub fn class_duration(class: SoundClass) -> (f32, f32) {
    match class {
        SoundClass::Beep => (0.12, 0.22),
        SoundClass::Chirp => (0.15, 0.25),
        SoundClass::ClickTrain => (0.2, 0.3),
        SoundClass::NoiseBurst => (0.1, 0.2),
        SoundClass::Siren => (0.25, 0.3),
        SoundClass::DrumHit => (0.12, 0.18),
        SoundClass::Buzz => (0.15, 0.25),
        SoundClass::Whistle => (0.15, 0.25),
    }
}

/// One annotated sound event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoundEvent {
    /// The event class.
    pub class: SoundClass,
    /// Onset in seconds.
    pub start_s: f32,
    /// Offset in seconds.
    pub end_s: f32,
    /// First sample of the event.
    pub start_sample: usize,
    /// One past the last sample of the event.
    pub end_sample: usize,
    /// The class's main frequency parameter in Hz (tone, sweep start, click rate, …).
    pub freq_hz: f32,
    /// Peak amplitude (full scale = 1).
    pub gain: f32,
    /// Seed of the event's own noise (noise bursts, drum attacks).
    pub noise_seed: u64,
}

/// A generated clip with its exact annotation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoundScene {
    /// Samples per second (always [`SAMPLE_RATE`]).
    pub sample_rate: u32,
    /// Number of samples.
    pub num_samples: usize,
    /// Events in time order, never overlapping.
    pub events: Vec<SoundEvent>,
    /// Background noise colour.
    pub noise: NoiseKind,
    /// Background noise amplitude.
    pub noise_level: f32,
    /// Seed of the background noise.
    pub noise_seed: u64,
    /// The class whose count this clip was balanced around (may be absent: count 0).
    pub probe: SoundClass,
    /// Generator seed.
    pub seed: u64,
    /// Index within the seed's stream.
    pub index: u64,
}

impl SoundScene {
    /// Duration in seconds.
    pub fn duration_s(&self) -> f32 {
        self.num_samples as f32 / self.sample_rate as f32
    }

    /// How many events of `class` the clip holds.
    pub fn count(&self, class: SoundClass) -> usize {
        self.events.iter().filter(|e| e.class == class).count()
    }

    /// Whether at least one event of `class` is present.
    pub fn contains(&self, class: SoundClass) -> bool {
        self.events.iter().any(|e| e.class == class)
    }

    /// Distinct classes in order of first occurrence.
    pub fn classes(&self) -> Vec<SoundClass> {
        distinct(self.events.iter().map(|e| e.class))
    }

    /// Count of every class in the vocabulary (zero included), in [`SoundClass::ALL`] order.
    pub fn counts(&self) -> Vec<(SoundClass, usize)> {
        tally(|c| self.count(c))
    }
}

/// Generates clip `index` of the stream `seed`; deterministic per (config, seed, index).
pub fn generate_sound(cfg: &SoundConfig, seed: u64, index: u64) -> SoundScene {
    let mut rng = stream_rng(seed, index, purpose::SOUND);
    let k = rng.random_range(0..=cfg.effective_max_count());
    sound_with(cfg, seed, index, &mut rng, k)
}

/// Like [`generate_sound`] but the probe class occurs exactly `count` times (clamped).
pub fn generate_sound_with_count(
    cfg: &SoundConfig,
    seed: u64,
    index: u64,
    count: usize,
) -> SoundScene {
    let mut rng = stream_rng(seed, index, purpose::SOUND);
    let _ = rng.random_range(0..=cfg.effective_max_count());
    sound_with(
        cfg,
        seed,
        index,
        &mut rng,
        count.min(cfg.effective_max_count()),
    )
}

fn sound_with<R: Rng>(
    cfg: &SoundConfig,
    seed: u64,
    index: u64,
    rng: &mut R,
    k: usize,
) -> SoundScene {
    let num_samples = cfg.num_samples().max(1);
    let duration = num_samples as f32 / SAMPLE_RATE as f32;
    let max_n = cfg.max_events.max(k);
    let min_n = cfg.min_events.min(max_n).max(k);
    let n = rng.random_range(min_n..=max_n);
    let (probe, cats) = cfg.prior().draw_item(rng, n, k);
    let probe = SoundClass::ALL[probe.min(SoundClass::ALL.len() - 1)];
    let mut classes: Vec<SoundClass> = cats
        .iter()
        .map(|&c| SoundClass::ALL[c.min(SoundClass::ALL.len() - 1)])
        .collect();
    let mut durations: Vec<f32> = classes
        .iter()
        .map(|c| {
            let (lo, hi) = class_duration(*c);
            rng.random_range(lo..=hi)
        })
        .collect();
    let edge = 0.02f32;
    let gap = cfg.min_gap_s.max(0.0);
    // Drop trailing events that cannot fit (only with hand-made configs; validate() rejects them).
    while !classes.is_empty() {
        let need: f32 =
            durations.iter().sum::<f32>() + gap * (classes.len() - 1) as f32 + 2.0 * edge;
        if need <= duration {
            break;
        }
        classes.pop();
        durations.pop();
    }
    let need: f32 =
        durations.iter().sum::<f32>() + gap * classes.len().saturating_sub(1) as f32 + 2.0 * edge;
    let slack = (duration - need).max(0.0);
    let parts: Vec<f32> = (0..=classes.len())
        .map(|_| -(rng.random::<f32>().max(1e-6)).ln())
        .collect();
    let total: f32 = parts.iter().sum();
    let mut t = edge;
    let mut events = Vec::with_capacity(classes.len());
    for (i, (&class, &d)) in classes.iter().zip(durations.iter()).enumerate() {
        t += slack * parts[i] / total;
        let start_sample = (t * SAMPLE_RATE as f32).round() as usize;
        let end_sample = (((t + d) * SAMPLE_RATE as f32).round() as usize).min(num_samples);
        let freq_hz = class_freq(class, rng);
        let gain = rng.random_range(cfg.event_gain[0]..=cfg.event_gain[1].max(cfg.event_gain[0]));
        events.push(SoundEvent {
            class,
            start_s: start_sample as f32 / SAMPLE_RATE as f32,
            end_s: end_sample as f32 / SAMPLE_RATE as f32,
            start_sample,
            end_sample,
            freq_hz,
            gain,
            noise_seed: rng.random(),
        });
        t += d + gap;
    }
    let noise = if rng.random_bool(0.5) {
        NoiseKind::White
    } else {
        NoiseKind::Pink
    };
    let noise_level =
        rng.random_range(cfg.noise_level[0]..=cfg.noise_level[1].max(cfg.noise_level[0]));
    SoundScene {
        sample_rate: SAMPLE_RATE,
        num_samples,
        events,
        noise,
        noise_level,
        noise_seed: rng.random(),
        probe,
        seed,
        index,
    }
}

fn class_freq<R: Rng>(class: SoundClass, rng: &mut R) -> f32 {
    let (lo, hi) = match class {
        SoundClass::Beep => (600.0, 1200.0),
        SoundClass::Chirp => (400.0, 800.0),
        SoundClass::ClickTrain => (25.0, 45.0),
        SoundClass::NoiseBurst => (0.0, 0.0),
        SoundClass::Siren => (650.0, 900.0),
        SoundClass::DrumHit => (110.0, 170.0),
        SoundClass::Buzz => (110.0, 180.0),
        SoundClass::Whistle => (2000.0, 3000.0),
    };
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

/// Deterministic uniform noise in [-1, 1) from a splitmix state.
fn noise_sample(state: &mut u64) -> f32 {
    *state = splitmix64(*state);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn envelope(i: usize, len: usize, ramp: usize) -> f32 {
    let ramp = ramp.min(len / 2).max(1);
    if i < ramp {
        i as f32 / ramp as f32
    } else if i + ramp > len {
        (len - i) as f32 / ramp as f32
    } else {
        1.0
    }
}

/// Synthesises the clip's samples (mono, [`SAMPLE_RATE`] Hz, within [-1, 1]).
pub fn synthesise(scene: &SoundScene) -> Vec<f32> {
    let sr = scene.sample_rate.max(1) as f32;
    let mut out = vec![0.0f32; scene.num_samples];
    // Background noise.
    let mut state = scene.noise_seed;
    let mut lp = 0.0f32;
    for s in out.iter_mut() {
        let w = noise_sample(&mut state);
        *s = match scene.noise {
            NoiseKind::White => w * scene.noise_level,
            NoiseKind::Pink => {
                lp = 0.9 * lp + 0.1 * w;
                lp * 3.0 * scene.noise_level
            }
        };
    }
    for ev in &scene.events {
        let start = ev.start_sample.min(out.len());
        let end = ev.end_sample.min(out.len());
        let len = end - start;
        if len == 0 {
            continue;
        }
        let dur = len as f32 / sr;
        let f = ev.freq_hz;
        let mut ns = ev.noise_seed;
        let ramp = (0.005 * sr) as usize;
        let mut phase = 0.0f32;
        for i in 0..len {
            let t = i as f32 / sr;
            let v = match ev.class {
                SoundClass::Beep => (TAU * f * t).sin() * envelope(i, len, ramp),
                SoundClass::Whistle => {
                    let inst = f * (1.0 + 0.01 * (TAU * 6.0 * t).sin());
                    phase += TAU * inst / sr;
                    phase.sin() * envelope(i, len, ramp)
                }
                SoundClass::Chirp => {
                    let f1 = f * 3.0;
                    (TAU * (f * t + (f1 - f) * t * t / (2.0 * dur))).sin() * envelope(i, len, ramp)
                }
                SoundClass::Siren => {
                    let inst = f + 250.0 * (TAU * 7.0 * t).sin();
                    phase += TAU * inst / sr;
                    phase.sin() * envelope(i, len, ramp)
                }
                SoundClass::ClickTrain => {
                    let period = (sr / f.max(1.0)) as usize;
                    let k = i % period.max(1);
                    let decay = (-(k as f32) / (0.004 * sr)).exp();
                    ((TAU * 3000.0 * k as f32 / sr).sin() * decay * 1.5).clamp(-1.0, 1.0)
                }
                SoundClass::NoiseBurst => noise_sample(&mut ns) * envelope(i, len, ramp),
                SoundClass::DrumHit => {
                    let inst = f * (0.4 + 0.6 * (-t / 0.03).exp());
                    phase += TAU * inst / sr;
                    let body = phase.sin() * (-t / 0.06).exp();
                    let attack = noise_sample(&mut ns) * (-t / 0.004).exp() * 0.5;
                    (body + attack) * envelope(i, len, 8)
                }
                SoundClass::Buzz => {
                    phase += TAU * f / sr;
                    let mut v = 0.0;
                    for h in 1..=8 {
                        v += (phase * h as f32).sin() / h as f32;
                    }
                    v * 0.55 * envelope(i, len, ramp)
                }
            };
            out[start + i] += v * ev.gain;
        }
    }
    for s in out.iter_mut() {
        *s = s.clamp(-1.0, 1.0);
    }
    out
}

/// Encodes samples as a 16-bit PCM mono WAV file at `sample_rate`.
pub fn wav_bytes(samples: &[f32], sample_rate: u32) -> Result<Vec<u8>> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cursor = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    let err = |e: hound::Error| DatasetError::Encode {
        path: "<wav in memory>".into(),
        message: e.to_string(),
    };
    {
        let mut writer = hound::WavWriter::new(&mut cursor, spec).map_err(err)?;
        for &s in samples {
            let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            writer.write_sample(v).map_err(err)?;
        }
        writer.finalize().map_err(err)?;
    }
    Ok(cursor.into_inner())
}
