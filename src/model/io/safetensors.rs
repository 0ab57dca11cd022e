//! Safetensors: headers checked before they are trusted, files memory-mapped, and tensors
//! written back.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde_json::Value;
use sha2::Digest;

use super::{io_err, weights_err, CheckpointError};

/// Largest safetensors header accepted (the `safetensors` crate's limit).
const MAX_HEADER: u64 = 100_000_000;

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
pub(crate) struct StFile {
    pub(crate) path: PathBuf,
    pub(crate) mmap: memmap2::Mmap,
    pub(crate) tensors: HashMap<String, TensorInfo>,
    /// The raw header (part of the weights identity).
    pub(crate) header: Vec<u8>,
}

impl StFile {
    /// Maps `path` and validates its header: length, JSON, every dtype, shape and byte range.
    pub(crate) fn open(path: &Path) -> Result<Self, CheckpointError> {
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
    pub(crate) fn load(
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
    pub(crate) fn each_chunk(
        &self,
        info: &TensorInfo,
        hasher: &mut sha2::Sha256,
        mut f: impl FnMut(&[u8]),
    ) {
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
pub(crate) struct Weights {
    pub(crate) files: Vec<StFile>,
    /// Tensor name -> index into `files`.
    pub(crate) owner: HashMap<String, usize>,
    /// Where the file list came from (index file or the single weights file).
    pub(crate) source: PathBuf,
}

impl Weights {
    /// Opens `model.safetensors`, or the shards `model.safetensors.index.json` lists.
    pub(crate) fn open(dir: &Path) -> Result<Self, CheckpointError> {
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
    pub(crate) fn find<'a>(&self, names: &[&'a str]) -> Option<(&'a str, &StFile)> {
        names
            .iter()
            .find_map(|n| self.owner.get(*n).map(|&k| (*n, &self.files[k])))
    }

    /// Loads the tensor stored under one of `names`, checking its shape, as `dtype`.
    pub(crate) fn get(
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

/// Reads the bytes of a `model.safetensors` file into f32 tensors on `device`; errors name `path`.
pub fn parse_weights(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let werr = |msg: String| CheckpointError::Weights {
        path: path.to_path_buf(),
        msg,
    };
    let tensors =
        candle_core::safetensors::load_buffer(bytes, device).map_err(|e| werr(e.to_string()))?;
    tensors
        .into_iter()
        .map(|(k, v)| v.to_dtype(DType::F32).map(|v| (k, v)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| werr(e.to_string()))
}

/// Reads a `.safetensors` file into f32 tensors on `device`; errors name `path`.
pub fn read_weights(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    parse_weights(&bytes, path, device)
}

/// Serialises `vars` (sorted by name) as safetensors in `dtype`.
pub fn safetensors_bytes(vars: &VarMap, dtype: DType) -> Result<Vec<u8>, String> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| "variable map lock poisoned".to_string())?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let t = data[name]
            .as_tensor()
            .to_dtype(dtype)
            .map_err(|e| e.to_string())?;
        tensors.push((name.clone(), t));
    }
    tensors_to_bytes(&tensors)
}

/// Serialises named tensors as safetensors bytes.
pub fn tensors_to_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, String> {
    fn le<T: candle_core::WithDType>(
        t: &Tensor,
        f: impl Fn(T) -> Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        Ok(t.to_vec1::<T>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .flat_map(f)
            .collect())
    }
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let flat = t.flatten_all().map_err(|e| e.to_string())?;
        let (bytes, dt) = match t.dtype() {
            DType::F32 => (
                le::<f32>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::F32,
            ),
            DType::F16 => (
                le::<half::f16>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::F16,
            ),
            DType::BF16 => (
                le::<half::bf16>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::BF16,
            ),
            DType::U32 => (
                le::<u32>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::U32,
            ),
            DType::I64 => (
                le::<i64>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::I64,
            ),
            DType::U8 => (le::<u8>(&flat, |v| vec![v])?, safetensors::Dtype::U8),
            other => return Err(format!("cannot save dtype {other:?}")),
        };
        owned.push((name.clone(), bytes, t.dims().to_vec(), dt));
    }
    let views = owned
        .iter()
        .map(|(n, b, s, d)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    safetensors::tensor::serialize(views, None).map_err(|e| e.to_string())
}
