//! Image files: decode under the limits (PNG, JPEG, WebP, GIF, BMP), scale into the box,
//! pad and cut into patches.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mmlab::fusion::image::{load_image, patchify, ImageConfig};

fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mmlab-fuzz-image-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d.join("image")
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(file(), data).expect("write the input");
    if let Ok(img) = load_image(file()) {
        // A small box keeps each run fast whatever size the header claims.
        let cfg = ImageConfig {
            patch: 8,
            max_height: 64,
            max_width: 64,
        };
        let grid = patchify(&img, &cfg);
        assert_eq!(grid.data.len(), grid.n_patches() * grid.patch_dim);
    }
});
