//! Video as a sequence of still images: the frames of an animated GIF, or a list of image files.
//!
//! The sequence builder samples every `video_stride`-th frame, patchifies each like a
//! still image and separates consecutive frames with `|FRAME|`; the total number of
//! visual tokens is capped, and frames are decoded one at a time, so a long GIF
//! never has to fit in memory.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use image::codecs::gif::GifDecoder;
use image::{AnimationDecoder, ImageDecoder, RgbImage};

use super::error::FusionError;
use super::image::{check_not_empty, decode_limits, image_error, load_image};

/// Largest accepted `video_stride`.
pub const MAX_VIDEO_STRIDE: usize = 1000;

/// True when the file starts with the GIF signature.
pub fn is_gif(path: &Path) -> bool {
    let mut magic = [0u8; 6];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"GIF87a" || &magic == b"GIF89a")
        .unwrap_or(false)
}

/// The frames of a video file, decoded lazily.
///
/// An animated GIF yields each of its (fully composited) frames; any other image
/// file yields itself once. Every frame is checked against the decoding limits.
pub fn video_frames(
    path: &Path,
) -> Result<Box<dyn Iterator<Item = Result<RgbImage, FusionError>>>, FusionError> {
    if !is_gif(path) {
        let img = load_image(path)?;
        return Ok(Box::new(std::iter::once(Ok(img))));
    }
    let file = File::open(path).map_err(|source| FusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut decoder = GifDecoder::new(BufReader::new(file)).map_err(|e| image_error(path, e))?;
    decoder
        .set_limits(decode_limits())
        .map_err(|e| image_error(path, e))?;
    let owned: PathBuf = path.to_path_buf();
    let frames = decoder.into_frames().map(move |f| {
        let frame = f.map_err(|e| image_error(&owned, e))?;
        let rgba = frame.into_buffer();
        let (w, h) = rgba.dimensions();
        let raw = rgba.into_raw();
        let rgb: Vec<u8> = raw
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        let img = RgbImage::from_raw(w, h, rgb).ok_or_else(|| FusionError::ImageDecode {
            path: owned.clone(),
            detail: "frame buffer has the wrong size".into(),
        })?;
        check_not_empty(&img, &owned)?;
        Ok(img)
    });
    Ok(Box::new(frames))
}

/// Reads all frames of `path`, keeping every `stride`-th (first frame kept), at most `max_frames`.
///
/// Errors with [`FusionError::VideoEmpty`] when no frame is kept, and with
/// [`FusionError::TooManyVisualTokens`] (counting one token per kept frame) when more than
/// `max_frames` would be kept.
pub fn sample_frames(
    path: &Path,
    stride: usize,
    max_frames: usize,
) -> Result<Vec<RgbImage>, FusionError> {
    if stride == 0 || stride > MAX_VIDEO_STRIDE {
        return Err(FusionError::config(
            "video_stride",
            stride,
            "between 1 and 1000",
        ));
    }
    let mut kept = Vec::new();
    for (i, frame) in video_frames(path)?.enumerate() {
        let frame = frame?;
        if !i.is_multiple_of(stride) {
            continue;
        }
        if kept.len() == max_frames {
            return Err(FusionError::TooManyVisualTokens {
                path: path.to_path_buf(),
                tokens: kept.len() + 1,
                max: max_frames,
            });
        }
        kept.push(frame);
    }
    if kept.is_empty() {
        return Err(FusionError::VideoEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(kept)
}
