//! HuggingFace Fuyu checkpoints (the adept/fuyu-8b layout) loaded into the native model.
//!
//! A HF Fuyu directory holds `config.json` (`model_type: "fuyu"`, with the Persimmon
//! decoder in `text_config` or, in older files, flat at the top level), the weights as
//! `model.safetensors` or as shards `model-0000N-of-0000M.safetensors` listed by
//! `model.safetensors.index.json`, and `tokenizer.json`.
//!
//! The Persimmon decoder is the native model's block with these settings: LayerNorm with
//! bias, QK-LayerNorm over the head dimension before rotary, partial rotary (the first
//! `head_dim * partial_rotary_factor` channels, GPT-NeoX style), relu² MLP, untied LM head,
//! and a linear `vision_embed_tokens` over 30x30x3 patches. HF fuses Q, K and V into one
//! `query_key_value` projection whose output rows are laid out `(heads, 3, head_dim)`;
//! the loader splits it per head into `q_proj` / `k_proj` / `v_proj`.
//!
//! Weights are memory-mapped and every safetensors header is checked before it is trusted
//! (header length, dtypes, shapes, byte ranges), so a broken or hostile file gets an error
//! naming the file and the tensor, never a panic. Tensors are converted to the compute
//! dtype one at a time and their mapped pages released right after, so the peak resident
//! memory stays near the size of the loaded model.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;
use sha2::Digest;

use super::checkpoint::{CheckpointError, LoadedModel, ModelDirConfig};
use super::config::{Activation, ModelConfig, NormKind};
use super::design::Design;
use super::Model;
use crate::fusion::audio::AudioConfig;
use crate::fusion::image::ImageConfig;
use crate::fusion::text::TextTokenizer;
use crate::fusion::BosPlacement;

/// Largest safetensors header accepted (the `safetensors` crate's limit).
const MAX_HEADER: u64 = 100_000_000;

/// Whether `dir/config.json` declares `model_type: "fuyu"`.
pub fn is_hf_fuyu_dir(dir: &Path) -> bool {
    std::fs::read(dir.join("config.json")).is_ok_and(|b| is_hf_fuyu_json(&b))
}

/// Whether the bytes of a `config.json` declare `model_type: "fuyu"`.
pub fn is_hf_fuyu_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .is_ok_and(|v| v.get("model_type").and_then(Value::as_str) == Some("fuyu"))
}

/// The settings of a HF `FuyuConfig` that shape the network.
#[derive(Clone, Debug, PartialEq)]
pub struct HfFuyuConfig {
    /// Vocabulary size of the embedding and LM head.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Longest sequence (rotary table length).
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// LayerNorm over the head dimension of queries and keys.
    pub qk_layernorm: bool,
    /// Rotary base.
    pub rope_theta: f64,
    /// Share of each head's channels that is rotated.
    pub partial_rotary_factor: f64,
    /// Side of a square patch.
    pub patch_size: usize,
    /// Image channels.
    pub num_channels: usize,
    /// LM head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// The image placeholder id (`|SPEAKER|`).
    pub image_token_id: u32,
}

impl HfFuyuConfig {
    /// Reads a HF Fuyu `config.json` (5.x nested `text_config` or the flat 4.x layout).
    ///
    /// Keys missing in both places take FuyuConfig's defaults (those of adept/fuyu-8b).
    pub fn from_json(v: &Value) -> Result<Self, String> {
        if v.get("model_type").and_then(Value::as_str) != Some("fuyu") {
            return Err("model_type is not \"fuyu\"".into());
        }
        let text = v.get("text_config").filter(|t| t.is_object());
        // A key of the decoder: text_config first, then the top level.
        let get = |k: &str| -> Option<&Value> {
            text.and_then(|t| t.get(k))
                .filter(|x| !x.is_null())
                .or_else(|| v.get(k).filter(|x| !x.is_null()))
        };
        let rope = |k: &str| -> Option<&Value> {
            fn nested<'v>(o: &'v Value, k: &str) -> Option<&'v Value> {
                o.get("rope_parameters")
                    .and_then(|r| r.get(k))
                    .filter(|x| !x.is_null())
            }
            text.and_then(|t| nested(t, k))
                .or_else(|| nested(v, k))
                .or_else(|| get(k))
        };
        let usize_of = |k: &str, x: Option<&Value>, default: usize| -> Result<usize, String> {
            match x {
                None => Ok(default),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| format!("{k} is {x}, expected a non-negative integer")),
            }
        };
        let f64_of = |k: &str, x: Option<&Value>, default: f64| -> Result<f64, String> {
            match x {
                None => Ok(default),
                Some(x) => x
                    .as_f64()
                    .ok_or_else(|| format!("{k} is {x}, expected a number")),
            }
        };
        let bool_of = |k: &str, x: Option<&Value>, default: bool| -> Result<bool, String> {
            match x {
                None => Ok(default),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| format!("{k} is {x}, expected true or false")),
            }
        };
        if let Some(act) = get("hidden_act") {
            if act.as_str() != Some("relu2") {
                return Err(format!(
                    "hidden_act is {act}; only \"relu2\" (Persimmon) is supported"
                ));
            }
        }
        if let Some(rt) = rope("rope_type").and_then(Value::as_str) {
            if rt != "default" {
                return Err(format!(
                    "rope_type {rt:?} is not supported (only \"default\")"
                ));
            }
        }
        let image_token_id = usize_of("image_token_id", v.get("image_token_id"), 71011)?;
        let cfg = HfFuyuConfig {
            vocab_size: usize_of("vocab_size", get("vocab_size"), 262144)?,
            hidden_size: usize_of("hidden_size", get("hidden_size"), 4096)?,
            intermediate_size: usize_of("intermediate_size", get("intermediate_size"), 16384)?,
            num_hidden_layers: usize_of("num_hidden_layers", get("num_hidden_layers"), 36)?,
            num_attention_heads: usize_of("num_attention_heads", get("num_attention_heads"), 64)?,
            max_position_embeddings: usize_of(
                "max_position_embeddings",
                get("max_position_embeddings"),
                16384,
            )?,
            layer_norm_eps: f64_of("layer_norm_eps", get("layer_norm_eps"), 1e-5)?,
            qk_layernorm: bool_of("qk_layernorm", get("qk_layernorm"), true)?,
            rope_theta: f64_of("rope_theta", rope("rope_theta"), 25000.0)?,
            partial_rotary_factor: f64_of(
                "partial_rotary_factor",
                rope("partial_rotary_factor"),
                0.5,
            )?,
            patch_size: usize_of("patch_size", v.get("patch_size"), 30)?,
            num_channels: usize_of("num_channels", v.get("num_channels"), 3)?,
            tie_word_embeddings: bool_of(
                "tie_word_embeddings",
                v.get("tie_word_embeddings"),
                false,
            )?,
            image_token_id: u32::try_from(image_token_id)
                .map_err(|_| format!("image_token_id {image_token_id} is too large"))?,
        };
        if cfg.num_channels != 3 {
            return Err(format!(
                "num_channels is {}; only RGB (3) is supported",
                cfg.num_channels
            ));
        }
        if cfg.patch_size == 0 || cfg.patch_size > 1080 {
            return Err(format!("patch_size {} is outside 1..=1080", cfg.patch_size));
        }
        let head_dim = cfg.hidden_size / cfg.num_attention_heads.max(1);
        let rot = head_dim as f64 * cfg.partial_rotary_factor;
        if rot.fract() != 0.0 || !(rot as usize).is_multiple_of(2) {
            return Err(format!(
                "head_dim {head_dim} x partial_rotary_factor {} is not an even whole number",
                cfg.partial_rotary_factor
            ));
        }
        let model = cfg.model_config();
        model.validate().map_err(|e| e.0)?;
        Ok(cfg)
    }

    /// The native model's config for this decoder.
    pub fn model_config(&self) -> ModelConfig {
        ModelConfig {
            vocab_size: self.vocab_size,
            d_model: self.hidden_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_attention_heads,
            d_ff: self.intermediate_size,
            max_seq_len: self.max_position_embeddings,
            norm: NormKind::LayerNorm,
            norm_eps: self.layer_norm_eps,
            qk_norm: self.qk_layernorm,
            rope_theta: self.rope_theta,
            partial_rotary_factor: self.partial_rotary_factor,
            activation: Activation::Relu2,
            patch_dim: self.patch_size * self.patch_size * self.num_channels,
            frame_dim: 0,
            tie_embeddings: self.tie_word_embeddings,
            bolt: None,
        }
    }

    /// The directory config our tooling sees: design [`Design::HfFuyu`], Fuyu's image box.
    pub fn dir_config(&self) -> ModelDirConfig {
        ModelDirConfig {
            design: Design::HfFuyu,
            preset: None,
            model: self.model_config(),
            image: ImageConfig {
                patch: self.patch_size,
                ..ImageConfig::fuyu()
            },
            audio: AudioConfig::default(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn weights_err(path: &Path, msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Weights {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads `dir/config.json` as a HF Fuyu config.
pub fn read_hf_config(dir: &Path) -> Result<HfFuyuConfig, CheckpointError> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Config {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    HfFuyuConfig::from_json(&v).map_err(|msg| CheckpointError::Config { path, msg })
}

// ---------------------------------------------------------------------------
// Safetensors, validated and memory-mapped.
// ---------------------------------------------------------------------------

/// Element type of a stored tensor (those a float checkpoint may hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StDtype {
    F32,
    F16,
    Bf16,
}

impl StDtype {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(StDtype::F32),
            "F16" => Some(StDtype::F16),
            "BF16" => Some(StDtype::Bf16),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::Bf16 => 2,
        }
    }
}

/// Where one tensor lies in its file (offsets already checked against the file).
#[derive(Clone, Debug)]
pub struct TensorInfo {
    dtype: StDtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// First byte of the tensor in the file.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
}

/// A safetensors header checked against the file it came from.
#[derive(Clone, Debug)]
pub struct CheckedHeader {
    /// Every tensor by name (`__metadata__` skipped).
    pub tensors: HashMap<String, TensorInfo>,
    /// Length of the JSON header in bytes (the data starts 8 bytes later).
    pub header_len: usize,
}

/// Checks the header of a safetensors file (`bytes` is the whole file): header length, JSON,
/// every dtype (F32, F16, BF16), shape and byte range. Errors name `path` and the tensor.
pub fn check_safetensors(bytes: &[u8], path: &Path) -> Result<CheckedHeader, CheckpointError> {
    let len = bytes.len() as u64;
    if len < 8 {
        return Err(weights_err(
            path,
            format!("file is {len} bytes, too short for a safetensors header"),
        ));
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n8);
    if n > len - 8 {
        return Err(weights_err(
            path,
            format!(
                "header length {n} is larger than the file ({len} bytes) allows; \
                 not a safetensors file or truncated"
            ),
        ));
    }
    if n > MAX_HEADER {
        return Err(weights_err(
            path,
            format!("header length {n} is over the {MAX_HEADER}-byte limit"),
        ));
    }
    let data_start = 8 + n as usize;
    let data_len = bytes.len() - data_start;
    let json: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| weights_err(path, format!("header is not a JSON object: {e}")))?;
    let mut tensors = HashMap::with_capacity(json.len());
    for (name, info) in &json {
        if name == "__metadata__" {
            continue;
        }
        let bad = |msg: String| weights_err(path, format!("tensor {name:?}: {msg}"));
        let dtype_s = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no dtype".into()))?;
        let dtype = StDtype::parse(dtype_s).ok_or_else(|| {
            bad(format!(
                "dtype {dtype_s} is not a float type this loader reads (F32, F16, BF16)"
            ))
        })?;
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no shape".into()))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("shape is not a list of non-negative integers".into()))?;
        let offs = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| bad("data_offsets is not [begin, end]".into()))?;
        let (b, e) = offs;
        if b > e || e > data_len as u64 {
            return Err(bad(format!(
                "data_offsets [{b}, {e}] fall outside the {data_len} data bytes"
            )));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        if numel as u64 != e - b {
            return Err(bad(format!(
                "shape {shape:?} of {dtype_s} needs {numel} bytes but data_offsets span {}",
                e - b
            )));
        }
        tensors.insert(
            name.clone(),
            TensorInfo {
                dtype,
                shape,
                start: data_start + b as usize,
                end: data_start + e as usize,
            },
        );
    }
    Ok(CheckedHeader {
        tensors,
        header_len: n as usize,
    })
}

/// Reads a `model.safetensors.index.json`: its `weight_map` as (tensor, shard file name)
/// pairs, sorted by tensor. Errors name `path`; a shard must be a plain file name.
pub fn parse_weight_index(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<(String, String)>, CheckpointError> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| weights_err(path, format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| weights_err(path, "no \"weight_map\" object"))?;
    let mut out = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            weights_err(
                path,
                format!("tensor {tensor:?}: file name is not a string"),
            )
        })?;
        let fp = Path::new(file);
        let plain = matches!(
            fp.components().collect::<Vec<_>>().as_slice(),
            [std::path::Component::Normal(_)]
        );
        if !plain || file.contains("..") {
            return Err(weights_err(
                path,
                format!("tensor {tensor:?}: shard {file:?} is not a file name in the directory"),
            ));
        }
        out.push((tensor.clone(), file.to_string()));
    }
    out.sort();
    Ok(out)
}

/// One memory-mapped safetensors file with its checked header.
struct StFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    tensors: HashMap<String, TensorInfo>,
    /// The raw header (part of the weights identity).
    header: Vec<u8>,
}

impl StFile {
    /// Maps `path` and validates its header: length, JSON, every dtype, shape and byte range.
    fn open(path: &Path) -> Result<Self, CheckpointError> {
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len < 8 {
            return Err(weights_err(
                path,
                format!("file is {len} bytes, too short for a safetensors header"),
            ));
        }
        // SAFETY: the map is read-only and private; every read below is bounds-checked
        // against the length validated here. As with any mapped file, truncating or
        // rewriting it while it is loaded is not supported.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        if mmap.len() as u64 != len {
            return Err(weights_err(path, "the file changed while it was opened"));
        }
        let checked = check_safetensors(&mmap, path)?;
        let header = mmap[8..8 + checked.header_len].to_vec();
        let tensors = checked.tensors;
        Ok(StFile {
            path: path.to_path_buf(),
            mmap,
            tensors,
            header,
        })
    }

    /// Copies tensor `name` into a tensor of `dtype`, a chunk at a time, dropping each
    /// chunk's mapped pages once it is copied.
    fn load(
        &self,
        name: &str,
        dtype: DType,
        hasher: &mut sha2::Sha256,
    ) -> candle_core::Result<Tensor> {
        let Some(info) = self.tensors.get(name) else {
            candle_core::bail!("tensor {name:?} is not in this file");
        };
        hasher.update(name.as_bytes());
        let shape = info.shape.as_slice();
        let n = info.shape.iter().product::<usize>();
        let bf16 = |c: &[u8]| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]]));
        let f16 = |c: &[u8]| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
        let f32le = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let t = match (info.dtype, dtype) {
            (StDtype::Bf16, DType::BF16) => {
                let mut v = Vec::with_capacity(n);
                self.each_chunk(info, hasher, |b| v.extend(b.chunks_exact(2).map(bf16)));
                Tensor::from_vec(v, shape, &Device::Cpu)?
            }
            (StDtype::F16, DType::F16) => {
                let mut v = Vec::with_capacity(n);
                self.each_chunk(info, hasher, |b| v.extend(b.chunks_exact(2).map(f16)));
                Tensor::from_vec(v, shape, &Device::Cpu)?
            }
            (src, _) => {
                let mut v: Vec<f32> = Vec::with_capacity(n);
                self.each_chunk(info, hasher, |b| match src {
                    StDtype::F32 => v.extend(b.chunks_exact(4).map(f32le)),
                    StDtype::F16 => v.extend(b.chunks_exact(2).map(|c| f16(c).to_f32())),
                    StDtype::Bf16 => v.extend(b.chunks_exact(2).map(|c| bf16(c).to_f32())),
                });
                Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?
            }
        };
        Ok(t)
    }

    /// Feeds the tensor's bytes to `f` (and the hasher) in chunks of whole elements, then
    /// lets the kernel drop each chunk's mapped pages, so the file's bytes never stay
    /// resident next to their copy. Dropped pages are re-read from disk if touched again.
    fn each_chunk(&self, info: &TensorInfo, hasher: &mut sha2::Sha256, mut f: impl FnMut(&[u8])) {
        const CHUNK: usize = 8 << 20;
        let mut pos = info.start;
        while pos < info.end {
            let end = (pos + CHUNK).min(info.end);
            let bytes = &self.mmap[pos..end];
            hasher.update(bytes);
            f(bytes);
            // SAFETY: a private read-only file mapping: MADV_DONTNEED only discards clean
            // pages, later reads see the file's contents again; `bytes` is not used after.
            let _ = unsafe {
                self.mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, pos, end - pos)
            };
            pos = end;
        }
    }
}

/// All weight files of a directory and which file holds each tensor.
struct Weights {
    files: Vec<StFile>,
    /// Tensor name -> index into `files`.
    owner: HashMap<String, usize>,
    /// Where the file list came from (index file or the single weights file).
    source: PathBuf,
}

impl Weights {
    /// Opens `model.safetensors`, or the shards `model.safetensors.index.json` lists.
    fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index.is_file() {
            let bytes = std::fs::read(&index).map_err(io_err(&index))?;
            let map = parse_weight_index(&bytes, &index)?;
            let mut names: BTreeMap<String, usize> = BTreeMap::new();
            let mut files = Vec::new();
            let mut claimed: HashMap<String, usize> = HashMap::new();
            for (tensor, file) in &map {
                let file = file.as_str();
                let k = match names.get(file) {
                    Some(&k) => k,
                    None => {
                        files.push(StFile::open(&dir.join(file))?);
                        names.insert(file.to_string(), files.len() - 1);
                        files.len() - 1
                    }
                };
                if !files[k].tensors.contains_key(tensor) {
                    return Err(weights_err(
                        &files[k].path,
                        format!(
                            "tensor {tensor:?} is listed for this shard in {} but is not in it",
                            index.display()
                        ),
                    ));
                }
                claimed.insert(tensor.clone(), k);
            }
            Ok(Weights {
                files,
                owner: claimed,
                source: index,
            })
        } else if single.is_file() {
            let f = StFile::open(&single)?;
            let owner = f.tensors.keys().map(|k| (k.clone(), 0)).collect();
            Ok(Weights {
                files: vec![f],
                owner,
                source: single,
            })
        } else {
            Err(CheckpointError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors and no model.safetensors.index.json",
                ),
            })
        }
    }

    /// The first of `names` the checkpoint holds, with its file.
    fn find<'a>(&self, names: &[&'a str]) -> Option<(&'a str, &StFile)> {
        names
            .iter()
            .find_map(|n| self.owner.get(*n).map(|&k| (*n, &self.files[k])))
    }

    /// Loads the tensor stored under one of `names`, checking its shape, as `dtype`.
    fn get(
        &self,
        names: &[&str],
        shape: &[usize],
        dtype: DType,
        hasher: &mut sha2::Sha256,
    ) -> Result<Tensor, CheckpointError> {
        let Some((name, file)) = self.find(names) else {
            return Err(weights_err(
                &self.source,
                format!("missing tensor {:?}", names.join("\" or \"")),
            ));
        };
        let info = &file.tensors[name];
        if info.shape != shape {
            return Err(weights_err(
                &file.path,
                format!(
                    "tensor {name:?} has shape {:?}, the config needs {shape:?}",
                    info.shape
                ),
            ));
        }
        file.load(name, dtype, hasher)
            .map_err(|e| weights_err(&file.path, format!("tensor {name:?}: {e}")))
    }
}

/// HF names a native-model tensor may have: 5.x (`model.language_model.*`) and the
/// adept/fuyu-8b files (`language_model.model.*`).
fn lm_names(rest: &str) -> [String; 2] {
    [
        format!("language_model.model.{rest}"),
        format!("model.language_model.{rest}"),
    ]
}

/// Loads a HF Fuyu directory onto `device` with weights in `dtype` (F32, or BF16/F16).
pub fn load_hf_fuyu(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<LoadedModel, CheckpointError> {
    let hf = read_hf_config(dir)?;
    let config = hf.dir_config();
    let m = &config.model;
    let weights = Weights::open(dir)?;
    let mut hasher = sha2::Sha256::new();
    // The compute dtype is part of the identity: bf16 answers must not hit f32 caches.
    hasher.update(format!("dtype={dtype:?}"));
    for f in &weights.files {
        hasher.update(&f.header);
    }
    let (d, ff, v, hd) = (m.d_model, m.d_ff, m.vocab_size, m.head_dim());
    let nh = m.n_heads;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let to_dev = |t: Tensor, path: &Path| -> Result<Tensor, CheckpointError> {
        t.to_device(device)
            .map_err(|e| weights_err(path, e.to_string()))
    };
    let put = |ours: String,
               names: &[String],
               shape: &[usize],
               tensors: &mut HashMap<String, Tensor>,
               hasher: &mut sha2::Sha256|
     -> Result<(), CheckpointError> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let t = weights.get(&refs, shape, dtype, hasher)?;
        tensors.insert(ours, to_dev(t, &weights.source)?);
        Ok(())
    };
    put(
        "embed_tokens.weight".into(),
        &lm_names("embed_tokens.weight"),
        &[v, d],
        &mut tensors,
        &mut hasher,
    )?;
    for p in ["weight", "bias"] {
        let shape: Vec<usize> = if p == "weight" {
            vec![d, m.patch_dim]
        } else {
            vec![d]
        };
        put(
            format!("vision_embed.{p}"),
            &[
                format!("vision_embed_tokens.{p}"),
                format!("model.vision_embed_tokens.{p}"),
            ],
            &shape,
            &mut tensors,
            &mut hasher,
        )?;
    }
    for i in 0..m.n_layers {
        let l = format!("layers.{i}");
        let norm = |name: &str,
                    dim: usize,
                    tensors: &mut HashMap<String, Tensor>,
                    hasher: &mut sha2::Sha256| {
            for p in ["weight", "bias"] {
                put(
                    format!("{l}.{name}.{p}"),
                    &lm_names(&format!("{l}.{name}.{p}")),
                    &[dim],
                    tensors,
                    hasher,
                )?;
            }
            Ok::<(), CheckpointError>(())
        };
        norm("input_layernorm", d, &mut tensors, &mut hasher)?;
        norm("post_attention_layernorm", d, &mut tensors, &mut hasher)?;
        if m.qk_norm {
            norm("self_attn.q_layernorm", hd, &mut tensors, &mut hasher)?;
            norm("self_attn.k_layernorm", hd, &mut tensors, &mut hasher)?;
        }
        // Fused QKV: output rows are (heads, 3, head_dim); split per head.
        for p in ["weight", "bias"] {
            let hf_name = format!("{l}.self_attn.query_key_value.{p}");
            let names = lm_names(&hf_name);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let shape: Vec<usize> = if p == "weight" {
                vec![3 * d, d]
            } else {
                vec![3 * d]
            };
            let fused = weights.get(&refs, &shape, dtype, &mut hasher)?;
            let file = weights
                .find(&refs)
                .map(|(_, f)| f.path.clone())
                .unwrap_or_else(|| weights.source.clone());
            let cols = if p == "weight" { d } else { 1 };
            let split = |k: usize| -> candle_core::Result<Tensor> {
                let t = fused
                    .reshape((nh, 3, hd, cols))?
                    .narrow(1, k, 1)?
                    .contiguous()?;
                if p == "weight" {
                    t.reshape((d, d))
                } else {
                    t.reshape(d)
                }
            };
            for (k, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                let t =
                    split(k).map_err(|e| weights_err(&file, format!("tensor {hf_name:?}: {e}")))?;
                tensors.insert(format!("{l}.self_attn.{proj}.{p}"), to_dev(t, &file)?);
            }
        }
        for (name, out, inp) in [
            ("self_attn.dense", d, d),
            ("mlp.dense_h_to_4h", ff, d),
            ("mlp.dense_4h_to_h", d, ff),
        ] {
            put(
                format!("{l}.{name}.weight"),
                &lm_names(&format!("{l}.{name}.weight")),
                &[out, inp],
                &mut tensors,
                &mut hasher,
            )?;
            put(
                format!("{l}.{name}.bias"),
                &lm_names(&format!("{l}.{name}.bias")),
                &[out],
                &mut tensors,
                &mut hasher,
            )?;
        }
    }
    for p in ["weight", "bias"] {
        put(
            format!("final_layernorm.{p}"),
            &lm_names(&format!("final_layernorm.{p}")),
            &[d],
            &mut tensors,
            &mut hasher,
        )?;
    }
    if !m.tie_embeddings {
        put(
            "lm_head.weight".into(),
            &[
                "language_model.lm_head.weight".into(),
                "lm_head.weight".into(),
            ],
            &[v, d],
            &mut tensors,
            &mut hasher,
        )?;
    }
    drop(weights);
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let model = Model::new(m, vb).map_err(|e| weights_err(dir, e.to_string()))?;
    let tpath = dir.join("tokenizer.json");
    let tokenizer = TextTokenizer::from_file(&tpath).map_err(|e| CheckpointError::Tokenizer {
        path: tpath.clone(),
        msg: e.to_string(),
    })?;
    let sp = tokenizer.specials;
    for (what, id) in [
        ("<s>", sp.bos),
        ("|ENDOFTEXT|", sp.eos),
        ("<0x04>", sp.boa),
        ("|SPEAKER|", sp.image),
        ("|NEWLINE|", sp.newline),
    ] {
        if id as usize >= v {
            return Err(CheckpointError::Tokenizer {
                path: tpath,
                msg: format!("{what} has id {id}, outside the model's vocabulary of {v}"),
            });
        }
    }
    if sp.image != hf.image_token_id {
        tracing::warn!(
            "{}: image_token_id {} differs from the tokenizer's |SPEAKER| id {}; using the tokenizer's",
            dir.display(),
            hf.image_token_id,
            sp.image
        );
    }
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        config,
        model,
        tokenizer,
        weights_sha256: hex::encode(hasher.finalize()),
        bos: BosPlacement::AfterLeadingImages,
    })
}
