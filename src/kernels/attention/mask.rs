//! The attention mask: which keys each query row sees, compact ([`AttnMask`], O(`b x keys`)),
//! and one forward's mask as every layer reads it ([`LayerMask`], with the dense and CUDA forms
//! built once).

use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor};

#[cfg(feature = "cuda")]
use super::super::cuda::CudaMask;

/// Which keys every query row of one attention call sees, in O(`b x keys`) memory: the rule a
/// dense `(b, 1, tq, tk)` additive mask would spell out entry by entry, kept as per-key flags.
///
/// Key `ki` is visible to query `qi` of batch row `bi` when `key_valid[bi * tk + ki] != 0`
/// (padding) and, for a causal mask, `ki <= past + qi` (a KV cache of `past` positions before
/// the `tq` queries; `tk = past + tq`). A query row that would see no key at all (a padded row)
/// sees its own key `past + qi` instead, so softmax stays finite.
///
/// Cheap to clone (the flags are shared); [`AttnMask::dense`] materialises the additive tensor
/// for paths that need it (candle's plain ops, the CUDA kernels).
#[derive(Clone, Debug)]
pub struct AttnMask {
    b: usize,
    tq: usize,
    past: usize,
    causal: bool,
    /// `b x tk` flags, nonzero for real keys.
    key_valid: std::sync::Arc<Vec<u8>>,
    /// The first valid key of every batch row (`tk` when it has none): a query row sees
    /// nothing exactly when this is at or past its causal limit.
    first_valid: std::sync::Arc<Vec<usize>>,
}

impl AttnMask {
    /// The decoder's mask: causal with a KV-cache offset `past` (queries are keys
    /// `past..past + t`), padded keys hidden. `key_valid` holds `b * (past + t)` flags.
    pub fn causal(b: usize, t: usize, past: usize, key_valid: &[u8]) -> Result<Self> {
        Self::new(b, t, past, key_valid, true)
    }

    /// An encoder's mask: every query sees every valid key of its batch row (no causal
    /// limit); `key_valid` holds `b * (past + t)` flags.
    pub fn bidirectional(b: usize, t: usize, past: usize, key_valid: &[u8]) -> Result<Self> {
        Self::new(b, t, past, key_valid, false)
    }

    fn new(b: usize, tq: usize, past: usize, key_valid: &[u8], causal: bool) -> Result<Self> {
        let want = past.checked_add(tq).and_then(|tk| tk.checked_mul(b));
        if want != Some(key_valid.len()) {
            candle_core::bail!(
                "attention mask: {} key flags for {b} rows of {past} + {tq} keys",
                key_valid.len()
            );
        }
        let tk = past + tq;
        let first_valid = (0..b)
            .map(|bi| {
                key_valid[bi * tk..(bi + 1) * tk]
                    .iter()
                    .position(|&x| x != 0)
                    .unwrap_or(tk)
            })
            .collect();
        Ok(Self {
            b,
            tq,
            past,
            causal,
            key_valid: std::sync::Arc::new(key_valid.to_vec()),
            first_valid: std::sync::Arc::new(first_valid),
        })
    }

    /// Batch rows.
    pub fn b(&self) -> usize {
        self.b
    }

    /// Query rows per batch row.
    pub fn tq(&self) -> usize {
        self.tq
    }

    /// Keys per batch row: `past + tq`.
    pub fn tk(&self) -> usize {
        self.past + self.tq
    }

    /// Keys before the first query (the KV cache).
    pub fn past(&self) -> usize {
        self.past
    }

    /// Whether keys after a query's own position are hidden.
    pub fn is_causal(&self) -> bool {
        self.causal
    }

    /// One past the last key query `qi` may see: `past + qi + 1` when causal, else `tk`.
    pub fn key_limit(&self, qi: usize) -> usize {
        if self.causal {
            (self.past + qi + 1).min(self.tk())
        } else {
            self.tk()
        }
    }

    /// The `b x tk` key flags, nonzero for real keys.
    pub fn key_valid(&self) -> &[u8] {
        &self.key_valid
    }

    /// The first real key of every batch row (`tk` when it has none).
    pub fn first_valid(&self) -> &[usize] {
        &self.first_valid
    }

    /// The `tk` key flags of batch row `bi` (empty when out of range).
    pub fn key_valid_row(&self, bi: usize) -> &[u8] {
        let tk = self.tk();
        self.key_valid
            .get(bi * tk..(bi + 1) * tk)
            .unwrap_or_default()
    }

    /// True when query `qi` of batch row `bi` has no valid key within its limit, so that it
    /// sees only its own key `past + qi`.
    pub fn sees_nothing(&self, bi: usize, qi: usize) -> bool {
        self.first_valid
            .get(bi)
            .is_none_or(|&f| f >= self.key_limit(qi))
    }

    /// Whether key `ki` is visible to query `qi` of batch row `bi` (false out of range).
    pub fn visible(&self, bi: usize, qi: usize, ki: usize) -> bool {
        if bi >= self.b || qi >= self.tq || ki >= self.tk() {
            return false;
        }
        if self.sees_nothing(bi, qi) {
            return ki == self.past + qi;
        }
        ki < self.key_limit(qi) && self.key_valid_row(bi)[ki] != 0
    }

    /// Heap bytes the mask holds: `b * tk` flags plus one index per batch row.
    pub fn bytes(&self) -> usize {
        self.key_valid.len() + self.first_valid.len() * std::mem::size_of::<usize>()
    }

    /// The dense additive mask `(b, 1, tq, tk)`: 0 where [`AttnMask::visible`], `-inf`
    /// elsewhere, built in f32 and converted to `dtype` on `device`. O(`b x tq x tk`).
    pub fn dense(&self, device: &candle_core::Device, dtype: candle_core::DType) -> Result<Tensor> {
        let (b, tq, tk) = (self.b, self.tq, self.tk());
        let mut m = vec![f32::NEG_INFINITY; b * tq * tk];
        if tk > 0 {
            for (r, row) in m.chunks_exact_mut(tk).enumerate() {
                let (bi, qi) = (r / tq, r % tq);
                if self.sees_nothing(bi, qi) {
                    row[self.past + qi] = 0.0;
                    continue;
                }
                let n = self.key_limit(qi);
                for (slot, &ok) in row[..n].iter_mut().zip(self.key_valid_row(bi)) {
                    if ok != 0 {
                        *slot = 0.0;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, tq, tk), device)?.to_dtype(dtype)
    }
}

/// One forward's attention mask, shared by every layer: the compact [`AttnMask`] the fused
/// kernels read (O(`b x keys`)), its dense additive form `(b, 1, tq, tk)` in the activations'
/// dtype for the plain path, and (`cuda` feature) its key flags on the device for the CUDA
/// kernels, each built on first use and then reused: at most once per forward, and the dense
/// form never when every layer takes the fused CPU op or the CUDA kernels.
#[derive(Debug)]
pub struct LayerMask {
    mask: AttnMask,
    device: Device,
    dtype: DType,
    dense: OnceLock<Tensor>,
    #[cfg(feature = "cuda")]
    cuda: OnceLock<Option<CudaMask>>,
}

impl LayerMask {
    /// Wraps `mask`; its dense form, when needed, is built on `device` in `dtype`.
    pub fn new(mask: AttnMask, device: &Device, dtype: DType) -> Self {
        Self {
            mask,
            device: device.clone(),
            dtype,
            dense: OnceLock::new(),
            #[cfg(feature = "cuda")]
            cuda: OnceLock::new(),
        }
    }

    /// The key flags the CUDA kernels read (`None`: no padded key), built on the first call.
    #[cfg(feature = "cuda")]
    pub fn cuda_keys(&self) -> Result<Option<&CudaMask>> {
        if let Some(m) = self.cuda.get() {
            return Ok(m.as_ref());
        }
        let m = CudaMask::from_attn(&self.mask, &self.device)?;
        Ok(self.cuda.get_or_init(|| m).as_ref())
    }

    /// The compact mask.
    pub fn mask(&self) -> &AttnMask {
        &self.mask
    }

    /// The dense additive mask `(b, 1, tq, tk)` (0 or `-inf`), built on the first call.
    pub fn dense(&self) -> Result<Tensor> {
        if let Some(t) = self.dense.get() {
            return Ok(t.clone());
        }
        let t = self.mask.dense(&self.device, self.dtype)?;
        Ok(self.dense.get_or_init(|| t).clone())
    }

    /// Whether the dense form has been built (the fused CPU path never builds it).
    pub fn dense_built(&self) -> bool {
        self.dense.get().is_some()
    }
}
