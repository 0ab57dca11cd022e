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

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;
use sha2::Digest;

use super::safetensors::Weights;
use super::{io_err, weights_err, CheckpointError, LoadedModel, ModelDirConfig};
use crate::fusion::audio::AudioConfig;
use crate::fusion::image::ImageConfig;
use crate::fusion::text::TextTokenizer;
use crate::fusion::BosPlacement;
use crate::model::config::{Activation, ModelConfig, NormKind};
use crate::model::design::Design;
use crate::model::Model;

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

/// HF names a native-model tensor may have: 5.x (`model.language_model.*`) and the
/// adept/fuyu-8b files (`language_model.model.*`).
fn lm_names(rest: &str) -> [String; 2] {
    [
        format!("language_model.model.{rest}"),
        format!("model.language_model.{rest}"),
    ]
}

/// Copies checkpoint tensors into our names, checking shapes, hashing what it reads.
struct Loader<'a> {
    weights: &'a Weights,
    dtype: DType,
    device: &'a Device,
    hasher: sha2::Sha256,
    tensors: HashMap<String, Tensor>,
}

impl Loader<'_> {
    /// Loads the tensor stored under one of `names` (checked against `shape`) as `ours`.
    fn put(
        &mut self,
        ours: String,
        names: &[String],
        shape: &[usize],
    ) -> Result<(), CheckpointError> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let t = self
            .weights
            .get(&refs, shape, self.dtype, &mut self.hasher)?;
        let t = self.to_device(t, &self.weights.source)?;
        self.tensors.insert(ours, t);
        Ok(())
    }

    fn to_device(&self, t: Tensor, path: &Path) -> Result<Tensor, CheckpointError> {
        t.to_device(self.device)
            .map_err(|e| weights_err(path, e.to_string()))
    }

    /// A language-model tensor stored under the same name in HF's layout.
    fn put_lm(&mut self, name: &str, shape: &[usize]) -> Result<(), CheckpointError> {
        self.put(name.to_string(), &lm_names(name), shape)
    }

    /// A LayerNorm's weight and bias.
    fn norm(&mut self, name: &str, dim: usize) -> Result<(), CheckpointError> {
        for p in ["weight", "bias"] {
            self.put_lm(&format!("{name}.{p}"), &[dim])?;
        }
        Ok(())
    }

    /// Layer `l`'s fused QKV projection, split into our `q_proj`, `k_proj`, `v_proj`: the
    /// fused output rows are (heads, 3, head_dim).
    fn qkv(&mut self, l: &str, m: &ModelConfig) -> Result<(), CheckpointError> {
        let (d, nh, hd) = (m.d_model, m.n_heads, m.head_dim());
        for p in ["weight", "bias"] {
            let hf_name = format!("{l}.self_attn.query_key_value.{p}");
            let names = lm_names(&hf_name);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let shape: Vec<usize> = if p == "weight" {
                vec![3 * d, d]
            } else {
                vec![3 * d]
            };
            let fused = self
                .weights
                .get(&refs, &shape, self.dtype, &mut self.hasher)?;
            let file = self
                .weights
                .find(&refs)
                .map(|(_, f)| f.path.clone())
                .unwrap_or_else(|| self.weights.source.clone());
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
                let t = self.to_device(t, &file)?;
                self.tensors.insert(format!("{l}.self_attn.{proj}.{p}"), t);
            }
        }
        Ok(())
    }

    /// Decoder block `i`: norms, attention, MLP.
    fn layer(&mut self, i: usize, m: &ModelConfig) -> Result<(), CheckpointError> {
        let (d, ff, hd) = (m.d_model, m.d_ff, m.head_dim());
        let l = format!("layers.{i}");
        self.norm(&format!("{l}.input_layernorm"), d)?;
        self.norm(&format!("{l}.post_attention_layernorm"), d)?;
        if m.qk_norm {
            self.norm(&format!("{l}.self_attn.q_layernorm"), hd)?;
            self.norm(&format!("{l}.self_attn.k_layernorm"), hd)?;
        }
        self.qkv(&l, m)?;
        for (name, out, inp) in [
            ("self_attn.dense", d, d),
            ("mlp.dense_h_to_4h", ff, d),
            ("mlp.dense_4h_to_h", d, ff),
        ] {
            self.put_lm(&format!("{l}.{name}.weight"), &[out, inp])?;
            self.put_lm(&format!("{l}.{name}.bias"), &[out])?;
        }
        Ok(())
    }

    /// Every tensor of the native model `m`, in HF Fuyu's order.
    fn model(&mut self, m: &ModelConfig) -> Result<(), CheckpointError> {
        let (d, v) = (m.d_model, m.vocab_size);
        self.put_lm("embed_tokens.weight", &[v, d])?;
        for p in ["weight", "bias"] {
            let shape: Vec<usize> = if p == "weight" {
                vec![d, m.patch_dim]
            } else {
                vec![d]
            };
            self.put(
                format!("vision_embed.{p}"),
                &[
                    format!("vision_embed_tokens.{p}"),
                    format!("model.vision_embed_tokens.{p}"),
                ],
                &shape,
            )?;
        }
        for i in 0..m.n_layers {
            self.layer(i, m)?;
        }
        self.norm("final_layernorm", d)?;
        if !m.tie_embeddings {
            self.put(
                "lm_head.weight".into(),
                &[
                    "language_model.lm_head.weight".into(),
                    "lm_head.weight".into(),
                ],
                &[v, d],
            )?;
        }
        Ok(())
    }
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
    let mut loader = Loader {
        weights: &weights,
        dtype,
        device,
        hasher,
        tensors: HashMap::new(),
    };
    loader.model(m)?;
    let Loader {
        hasher, tensors, ..
    } = loader;
    drop(weights);
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let model = Model::new(m, vb).map_err(|e| weights_err(dir, e.to_string()))?;
    let tokenizer = hf_tokenizer(dir, &hf, m.vocab_size)?;
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        config,
        model,
        tokenizer,
        weights_sha256: hex::encode(hasher.finalize()),
        bos: BosPlacement::AfterLeadingImages,
    })
}

/// `dir/tokenizer.json`, checked to hold Fuyu's special tokens inside the vocabulary `v`.
fn hf_tokenizer(dir: &Path, hf: &HfFuyuConfig, v: usize) -> Result<TextTokenizer, CheckpointError> {
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
    Ok(tokenizer)
}
