//! Images to patch rows, following HuggingFace's `FuyuImageProcessor` exactly.
//!
//! The pipeline for one image:
//! 1. decode with `image` under [`decode_limits`] (PNG, JPEG, WebP, GIF, BMP);
//! 2. if the image is larger than the box `max_height x max_width`, scale it down —
//!    never up — keeping the aspect ratio: `s = min(max_h / h, max_w / w)`,
//!    new size `floor(h * s) x floor(w * s)` (HF's `int()` truncation), with
//!    [`resize_bilinear`], a port of Pillow's `Image.resize(..., BILINEAR)` that
//!    reproduces it byte for byte (`fast_image_resize`, which follows Pillow-SIMD's
//!    16-bit taps, is one level off in about a quarter of the bytes; it stays
//!    available as [`resize_bilinear_fast`] for comparison);
//! 3. pad bottom and right to whole patches. HF pads the *uint8* image with the
//!    constant `1` (its `padding_value = 1.0` is applied before rescaling), so
//!    padded pixels normalise to `(1/255 - 0.5) / 0.5 = -0.99216`, not `-1` or `1`;
//!    HF pads to the whole box and then crops to `ceil(h / patch) * patch`, which
//!    is the same as padding to whole patches;
//! 4. normalise every byte `x` to `(x / 255 - 0.5) / 0.5` (computed as HF does:
//!    `f32(x * (1/255))` in f64, then `(v - 0.5) / 0.5` in f32);
//! 5. cut into `patch x patch` patches, patch rows top to bottom, patches left to
//!    right; each patch is flattened (row-in-patch, column-in-patch, channel),
//!    channel fastest — `patchify_image`'s `permute(0, 2, 3, 4, 1)`.
//!
//! The sequence builder then puts one `|NEWLINE|` token after each row of patches.

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageReader, Limits, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::FusionError;

/// Largest width or height, in pixels, any decoded image may have.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest allocation, in MiB, the image decoder may make for one image.
pub const MAX_IMAGE_ALLOC_MIB: u64 = 512;

/// Byte value HF's Fuyu processor pads with (before normalisation).
pub const PAD_BYTE: u8 = 1;

/// How images become patches: patch side and the box images are scaled down to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Side of a square patch in pixels (30 for HF Fuyu).
    pub patch: usize,
    /// Height of the box an image is scaled down to fit (1080 for HF Fuyu).
    pub max_height: usize,
    /// Width of the box an image is scaled down to fit (1920 for HF Fuyu).
    pub max_width: usize,
}

impl ImageConfig {
    /// HF Fuyu's settings: 30-pixel patches, 1080 x 1920 box.
    pub fn fuyu() -> Self {
        ImageConfig {
            patch: 30,
            max_height: 1080,
            max_width: 1920,
        }
    }

    /// Length of one flattened patch: `patch * patch * 3`.
    pub fn patch_dim(&self) -> usize {
        self.patch * self.patch * 3
    }

    /// Checks that every field is usable.
    pub fn validate(&self) -> Result<(), FusionError> {
        if self.patch == 0 || self.patch > 1024 {
            return Err(FusionError::config(
                "image.patch",
                self.patch,
                "a patch side between 1 and 1024 pixels",
            ));
        }
        if self.max_height == 0 || self.max_height > MAX_IMAGE_SIDE as usize {
            return Err(FusionError::config(
                "image.max_height",
                self.max_height,
                "a box height between 1 and 16384 pixels",
            ));
        }
        if self.max_width == 0 || self.max_width > MAX_IMAGE_SIDE as usize {
            return Err(FusionError::config(
                "image.max_width",
                self.max_width,
                "a box width between 1 and 16384 pixels",
            ));
        }
        Ok(())
    }

    /// Size `(height, width)` an image of `height x width` has after scaling down to fit the box.
    ///
    /// Uses HF's arithmetic (f64 scale, truncation); a side that would truncate to 0 becomes 1.
    pub fn fitted_size(&self, height: usize, width: usize) -> (usize, usize) {
        if height <= self.max_height && width <= self.max_width {
            return (height, width);
        }
        let sh = self.max_height as f64 / height as f64;
        let sw = self.max_width as f64 / width as f64;
        let s = sh.min(sw);
        let nh = ((height as f64 * s) as usize).max(1);
        let nw = ((width as f64 * s) as usize).max(1);
        (nh, nw)
    }

    /// Patch grid `(rows, cols)` an image of `height x width` becomes.
    pub fn grid_size(&self, height: usize, width: usize) -> (usize, usize) {
        if self.patch == 0 || height == 0 || width == 0 {
            return (0, 0);
        }
        let (h, w) = self.fitted_size(height, width);
        (h.div_ceil(self.patch), w.div_ceil(self.patch))
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self::fuyu()
    }
}

/// An image cut into patches: `rows * cols` patches of `patch_dim` values each, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatchGrid {
    /// Number of patch rows.
    pub rows: usize,
    /// Number of patches per row.
    pub cols: usize,
    /// Length of one flattened patch (`patch * patch * 3`).
    pub patch_dim: usize,
    /// Patch matrix, `(rows * cols) x patch_dim`, row-major.
    pub data: Vec<f32>,
}

impl PatchGrid {
    /// Number of patches.
    pub fn n_patches(&self) -> usize {
        self.rows * self.cols
    }

    /// Tokens this grid occupies in a sequence: one per patch plus one `|NEWLINE|` per row.
    pub fn n_tokens(&self) -> usize {
        self.rows * (self.cols + 1)
    }

    /// The flattened patch at index `i` (row-major), if it exists.
    pub fn patch(&self, i: usize) -> Option<&[f32]> {
        self.data.get(i * self.patch_dim..(i + 1) * self.patch_dim)
    }
}

/// The decoding limits every image load uses.
pub fn decode_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC_MIB * 1024 * 1024);
    limits
}

/// Maps an `image` error to a [`FusionError`] naming `path`.
pub(crate) fn image_error(path: &Path, err: image::ImageError) -> FusionError {
    match err {
        image::ImageError::Limits(e) => FusionError::ImageTooLarge {
            path: path.to_path_buf(),
            detail: e.to_string(),
            max_side: MAX_IMAGE_SIDE,
            max_mib: MAX_IMAGE_ALLOC_MIB,
        },
        image::ImageError::IoError(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
            FusionError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
        other => FusionError::ImageDecode {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

/// Decodes an image file (PNG, JPEG, WebP, GIF's first frame, BMP) to RGB under [`decode_limits`].
///
/// The format is guessed from the file's contents. Alpha is dropped (as Pillow's
/// `convert("RGB")` does); zero-size images are an error.
pub fn load_image(path: &Path) -> Result<RgbImage, FusionError> {
    let reader = ImageReader::open(path).map_err(|source| FusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = reader
        .with_guessed_format()
        .map_err(|source| FusionError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if reader.format().is_none() {
        return Err(FusionError::ImageDecode {
            path: path.to_path_buf(),
            detail: "unrecognised image format (expected PNG, JPEG, WebP, GIF or BMP)".into(),
        });
    }
    reader.limits(decode_limits());
    let img = reader.decode().map_err(|e| image_error(path, e))?;
    let rgb = img.into_rgb8();
    check_not_empty(&rgb, path)?;
    Ok(rgb)
}

/// Errors with [`FusionError::ImageEmpty`] when `img` has zero width or height.
pub(crate) fn check_not_empty(img: &RgbImage, path: &Path) -> Result<(), FusionError> {
    if img.width() == 0 || img.height() == 0 {
        return Err(FusionError::ImageEmpty {
            path: path.to_path_buf(),
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(())
}

/// The normalised value of one byte, `(x / 255 - 0.5) / 0.5`, computed as HF does.
///
/// HF rescales in f64 and stores f32 (`f32(x * (1/255))`), then normalises in f32;
/// `(v - 0.5) / 0.5` equals `(v - 0.5) * 2` exactly, and this form vectorises.
#[inline(always)]
pub fn normalise_byte(x: u8) -> f32 {
    ((x as f64 * (1.0 / 255.0)) as f32 - 0.5) * 2.0
}

/// The value padded pixels get after normalisation (`normalise_byte(PAD_BYTE)` = -0.99216).
pub fn pad_value() -> f32 {
    normalise_byte(PAD_BYTE)
}

/// Scales `img` down to fit the box of `cfg` (never up) with Pillow's bilinear filter.
///
/// Returns `None` when the image already fits (no copy is made).
pub fn resize_to_fit(img: &RgbImage, cfg: &ImageConfig) -> Option<RgbImage> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (nh, nw) = cfg.fitted_size(h, w);
    if (nh, nw) == (h, w) || h == 0 || w == 0 {
        return None;
    }
    Some(resize_bilinear(img, nw as u32, nh as u32))
}

/// Fixed-point precision of Pillow's 8-bit resampler (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Filter taps for one axis, as Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` make them.
struct Taps {
    /// Taps per output pixel (the stride of `k`).
    ksize: usize,
    /// First input index and number of taps of every output pixel.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point weights, `out_size x ksize`.
    k: Vec<i32>,
}

/// Pillow's bilinear (triangle) filter with support 1.
fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

impl Taps {
    /// Taps resampling `in_size` pixels to `out_size` (Pillow's `precompute_coeffs`, box = whole axis).
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // bilinear support 1.0 times the scale
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut k = vec![0i32; out_size * ksize];
        let mut w = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin).min(ksize);
            let mut ww = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(n) {
                *wx = bilinear_filter((x as f64 + xmin as f64 - center + 0.5) * ss);
                ww += *wx;
            }
            let one = (1u32 << PRECISION_BITS) as f64;
            for x in 0..n {
                let v = if ww != 0.0 { w[x] / ww } else { w[x] };
                k[xx * ksize + x] = if v < 0.0 {
                    (-0.5 + v * one) as i32
                } else {
                    (0.5 + v * one) as i32
                };
            }
            bounds.push((xmin, n));
        }
        Taps { ksize, bounds, k }
    }
}

/// Pillow's `clip8`: drops the fixed-point fraction and clamps to a byte.
#[inline(always)]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Horizontal pass over source rows `y0..y0 + rows` into a `out_w`-wide buffer.
fn resample_horizontal(src: &[u8], src_w: usize, y0: usize, rows: usize, taps: &Taps) -> Vec<u8> {
    let out_w = taps.bounds.len();
    let mut out = vec![0u8; out_w * rows * 3];
    let body = |(r, dst): (usize, &mut [u8])| {
        let row = &src[(y0 + r) * src_w * 3..(y0 + r + 1) * src_w * 3];
        for (xx, &(xmin, n)) in taps.bounds.iter().enumerate() {
            let k = &taps.k[xx * taps.ksize..xx * taps.ksize + n];
            let px = &row[xmin * 3..(xmin + n) * 3];
            let half = 1i32 << (PRECISION_BITS - 1);
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (p, &kk) in px.chunks_exact(3).zip(k) {
                s0 += p[0] as i32 * kk;
                s1 += p[1] as i32 * kk;
                s2 += p[2] as i32 * kk;
            }
            dst[xx * 3] = clip8(s0);
            dst[xx * 3 + 1] = clip8(s1);
            dst[xx * 3 + 2] = clip8(s2);
        }
    };
    if out.len() >= PARALLEL_MIN_BYTES {
        out.par_chunks_mut(out_w * 3).enumerate().for_each(body);
    } else {
        out.chunks_mut(out_w * 3).enumerate().for_each(body);
    }
    out
}

/// Vertical pass: `src` is `src_w` wide; row bounds of `taps` are relative to `y_shift`.
fn resample_vertical(src: &[u8], src_w: usize, y_shift: usize, taps: &Taps) -> Vec<u8> {
    let out_h = taps.bounds.len();
    let stride = src_w * 3;
    let mut out = vec![0u8; stride * out_h];
    let body = |(yy, dst): (usize, &mut [u8])| {
        let (ymin, n) = taps.bounds[yy];
        let ymin = ymin - y_shift;
        let k = &taps.k[yy * taps.ksize..yy * taps.ksize + n];
        let half = 1i32 << (PRECISION_BITS - 1);
        let mut acc = vec![half; stride];
        for (j, &kk) in k.iter().enumerate() {
            let row = &src[(ymin + j) * stride..(ymin + j + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * kk;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    };
    if out.len() >= PARALLEL_MIN_BYTES {
        out.par_chunks_mut(stride).enumerate().for_each(body);
    } else {
        out.chunks_mut(stride).enumerate().for_each(body);
    }
    out
}

/// Output size above which the resampler splits rows across threads.
const PARALLEL_MIN_BYTES: usize = 1 << 18;

/// Resizes to `new_w x new_h` exactly as Pillow's `Image.resize(size, Image.BILINEAR)` does.
///
/// A port of Pillow's (13.0) two-pass 8-bit convolution resampler (`Resample.c`):
/// float taps normalised to 22-bit fixed point, one pass per axis, rounding and
/// clamping to bytes after each pass. The horizontal pass runs first (only over the
/// source rows the vertical pass needs) unless the height shrinks by more than twice
/// as many pixels as the width, as Pillow decides. Rows are split across threads for
/// large images.
/// A zero target size gives an empty image.
pub fn resize_bilinear(img: &RgbImage, new_w: u32, new_h: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = (new_w as usize, new_h as usize);
    if nw == 0 || nh == 0 || w == 0 || h == 0 {
        return RgbImage::new(new_w, new_h);
    }
    if (nw, nh) == (w, h) {
        return img.clone();
    }
    let src: &[u8] = img.as_raw();
    let need_h = nw != w;
    let need_v = nh != h;
    // Pillow 13 runs the vertical pass first when the height shrinks by more
    // than twice as many pixels as the width (the pass order changes the rounding).
    let horizontal_first = !(h > nh && (h - nh) as i64 > (w as i64 - nw as i64) * 2);
    let out = if horizontal_first {
        let vert = Taps::new(h, nh);
        let (buf, y_shift) = if need_h {
            let first = vert.bounds[0].0;
            let last = vert.bounds[nh - 1].0 + vert.bounds[nh - 1].1;
            let (y0, rows) = if need_v {
                (first, last - first)
            } else {
                (0, h)
            };
            (resample_horizontal(src, w, y0, rows, &Taps::new(w, nw)), y0)
        } else {
            (src.to_vec(), 0)
        };
        if need_v {
            resample_vertical(&buf, nw, y_shift, &vert)
        } else {
            buf
        }
    } else {
        let buf = resample_vertical(src, w, 0, &Taps::new(h, nh));
        if need_h {
            resample_horizontal(&buf, w, 0, nh, &Taps::new(w, nw))
        } else {
            buf
        }
    };
    // Sizes are consistent by construction; fall back to an empty image rather than panic.
    RgbImage::from_raw(new_w, new_h, out).unwrap_or_else(|| RgbImage::new(new_w, new_h))
}

/// Resizes with `fast_image_resize`'s bilinear convolution (Pillow-SIMD's 16-bit taps).
///
/// Kept for comparison: it differs from Pillow by one level in about a quarter of
/// the bytes when downscaling (see `benches/reference/README.md`).
pub fn resize_bilinear_fast(
    img: &RgbImage,
    new_w: u32,
    new_h: u32,
) -> Result<RgbImage, FusionError> {
    let mut dst = RgbImage::new(new_w, new_h);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(img, &mut dst, &opts)
        .map_err(|e| FusionError::ImageResize {
            path: PathBuf::from("<in-memory image>"),
            from_w: img.width(),
            from_h: img.height(),
            to_w: new_w,
            to_h: new_h,
            detail: e.to_string(),
        })?;
    Ok(dst)
}

/// Cuts an image that already fits the box into normalised patches (no resizing).
///
/// Pixels beyond the right or bottom edge take [`pad_value`].
pub fn patchify_fitted(img: &RgbImage, patch: usize) -> PatchGrid {
    let (h, w) = (img.height() as usize, img.width() as usize);
    if patch == 0 || h == 0 || w == 0 {
        return PatchGrid {
            patch_dim: patch * patch * 3,
            ..Default::default()
        };
    }
    let rows = h.div_ceil(patch);
    let cols = w.div_ceil(patch);
    let patch_dim = patch * patch * 3;
    let row_len = patch * 3;
    let pad = pad_value();
    let raw: &[u8] = img.as_raw();
    let n = rows * cols * patch_dim;
    let mut data: Vec<f32> = Vec::with_capacity(n);
    // Every value is written exactly once below, so skip zeroing 25 MB for a full-HD image.
    let fill_patch_row = |(pr, out): (usize, &mut [MaybeUninit<f32>])| {
        for dy in 0..patch {
            let y = pr * patch + dy;
            for pc in 0..cols {
                let base = pc * patch_dim + dy * row_len;
                let dst = &mut out[base..base + row_len];
                if y >= h {
                    dst.iter_mut().for_each(|d| {
                        d.write(pad);
                    });
                    continue;
                }
                let x0 = pc * row_len;
                let x1 = ((pc + 1) * row_len).min(w * 3);
                let src = &raw[y * w * 3 + x0..y * w * 3 + x1];
                let (head, tail) = dst.split_at_mut(x1 - x0);
                for (d, &s) in head.iter_mut().zip(src) {
                    d.write(normalise_byte(s));
                }
                tail.iter_mut().for_each(|d| {
                    d.write(pad);
                });
            }
        }
    };
    let spare = &mut data.spare_capacity_mut()[..n];
    let chunk = cols * patch_dim;
    if n >= PARALLEL_MIN_BYTES {
        spare
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(fill_patch_row);
    } else {
        spare.chunks_mut(chunk).enumerate().for_each(fill_patch_row);
    }
    // SAFETY: `spare` has exactly `n` elements, split into `rows` chunks of `cols * patch_dim`;
    // for each chunk, every (dy, pc) pair writes all `row_len` values of
    // `base..base + row_len` (head + tail, or the pad fill), and those ranges tile the chunk
    // (`patch_dim = patch * row_len`). So all `n` values are initialised.
    unsafe { data.set_len(n) };
    PatchGrid {
        rows,
        cols,
        patch_dim,
        data,
    }
}

/// Scales down (if needed), pads, normalises and patchifies `img` as HF's Fuyu processor does.
///
/// A zero-size image or `cfg.patch == 0` gives an empty grid (0 rows).
pub fn patchify(img: &RgbImage, cfg: &ImageConfig) -> PatchGrid {
    match resize_to_fit(img, cfg) {
        Some(resized) => patchify_fitted(&resized, cfg.patch),
        None => patchify_fitted(img, cfg.patch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 11 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn normalisation_is_hfs_two_steps() {
        for x in 0..=255u8 {
            let rescaled = (x as f64 * (1.0 / 255.0)) as f32;
            let hf = (rescaled - 0.5f32) / 0.5f32;
            assert_eq!(normalise_byte(x).to_bits(), hf.to_bits(), "{x}");
        }
    }

    #[test]
    fn normalisation_endpoints() {
        assert_eq!(normalise_byte(0), -1.0);
        assert_eq!(normalise_byte(255), 1.0);
        assert!((normalise_byte(128) - (128.0 / 255.0 - 0.5) / 0.5).abs() < 1e-7);
        assert!((pad_value() - (1.0 / 255.0 - 0.5) / 0.5).abs() < 1e-7);
    }

    #[test]
    fn flatten_order_is_row_col_channel() {
        let img = gradient(4, 4);
        let g = patchify_fitted(&img, 2);
        assert_eq!((g.rows, g.cols, g.patch_dim), (2, 2, 12));
        // Patch (row 1, col 0) = index 2; its element (r=1, c=0, ch=2) is pixel (x=0, y=3), channel 2.
        let p = g.patch(2).unwrap();
        let idx = 2 * 3 + 2; // (r * 2 + c) * 3 + ch with r = 1, c = 0, ch = 2
        assert_eq!(p[idx], normalise_byte(img.get_pixel(0, 3)[2]));
        // Element (r=0, c=1, ch=0) of patch (0, 1) is pixel (x=3, y=0), channel 0.
        let p = g.patch(1).unwrap();
        assert_eq!(p[3], normalise_byte(img.get_pixel(3, 0)[0]));
    }

    #[test]
    fn pads_bottom_and_right_with_hf_value() {
        let img = gradient(5, 3);
        let g = patchify_fitted(&img, 4);
        assert_eq!((g.rows, g.cols), (1, 2));
        let p1 = g.patch(1).unwrap();
        // Column 4 of the image is column 0 of patch 1; column 5.. are padding.
        assert_eq!(p1[0], normalise_byte(img.get_pixel(4, 0)[0]));
        assert_eq!(p1[3], pad_value());
        // Row 3 is padding everywhere.
        let p0 = g.patch(0).unwrap();
        assert!(p0[3 * 12..].iter().all(|&v| v == pad_value()));
    }

    #[test]
    fn fitted_size_follows_hf() {
        let cfg = ImageConfig::fuyu();
        assert_eq!(cfg.fitted_size(100, 100), (100, 100));
        assert_eq!(cfg.fitted_size(1080, 1920), (1080, 1920));
        // 2160 x 1920: s = 0.5 -> 1080 x 960.
        assert_eq!(cfg.fitted_size(2160, 1920), (1080, 960));
        // 1500 x 2600: s = min(0.72, 0.73846) = 0.72 -> 1080 x 1872.
        assert_eq!(cfg.fitted_size(1500, 2600), (1080, 1872));
        // Never truncates to zero.
        assert_eq!(cfg.fitted_size(1, 5000), (1, 1920));
        assert_eq!(cfg.grid_size(1500, 2600), (36, 63));
    }

    #[test]
    fn resized_image_has_fitted_size() {
        let cfg = ImageConfig {
            patch: 4,
            max_height: 10,
            max_width: 10,
        };
        let img = gradient(40, 20);
        let g = patchify(&img, &cfg);
        // 20 x 40 -> s = 0.25 -> 5 x 10 -> 2 x 3 patches.
        assert_eq!((g.rows, g.cols), (2, 3));
        assert_eq!(g.data.len(), 6 * 48);
    }

    #[test]
    fn empty_inputs_give_empty_grid() {
        let g = patchify(&RgbImage::new(0, 0), &ImageConfig::fuyu());
        assert_eq!(g.n_patches(), 0);
        assert!(g.data.is_empty());
        assert!(ImageConfig {
            patch: 0,
            max_height: 8,
            max_width: 8
        }
        .validate()
        .is_err());
    }
}
