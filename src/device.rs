//! The compute device the command line selected (`--device cpu|cuda|cuda:N`).
//!
//! `mmlab train`, `eval` and `ask` load and build their models on [`current`]; it is the CPU
//! unless `--device` chose otherwise. CUDA needs a build with the `cuda` cargo feature.

use std::sync::OnceLock;

use candle_core::Device;

/// Why a `--device` value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device '{0}': expected cpu, cuda or cuda:N")]
    Unknown(String),
    /// A CUDA device was asked of a build without the `cuda` feature.
    #[error(
        "'{0}' needs a CUDA build of mmlab: this one was built without the `cuda` feature \
         (cargo build --release --features cuda; see the README's GPU section)"
    )]
    NotBuilt(String),
    /// The CUDA device could not be opened.
    #[error("opening {0}: {1}")]
    Open(String, candle_core::Error),
    /// `select` was called twice with different devices.
    #[error("the device is already {0:?}")]
    AlreadySet(Device),
}

/// Parses `cpu`, `cuda` (device 0) or `cuda:N` into a CUDA ordinal (`None` for the CPU).
pub fn parse(spec: &str) -> Result<Option<usize>, DeviceError> {
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(None),
        "cuda" | "gpu" => Ok(Some(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| DeviceError::Unknown(spec.to_string())),
    }
}

/// Opens the device `spec` names.
pub fn open(spec: &str) -> Result<Device, DeviceError> {
    match parse(spec)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => {
            if !cfg!(feature = "cuda") {
                return Err(DeviceError::NotBuilt(spec.to_string()));
            }
            Device::new_cuda(ordinal).map_err(|e| DeviceError::Open(spec.to_string(), e))
        }
    }
}

static SELECTED: OnceLock<Device> = OnceLock::new();

/// Opens `spec` and makes it the process' device (once).
pub fn select(spec: &str) -> Result<(), DeviceError> {
    let dev = open(spec)?;
    let set = SELECTED.get_or_init(|| dev.clone());
    if set.same_device(&dev) {
        Ok(())
    } else {
        Err(DeviceError::AlreadySet(set.clone()))
    }
}

/// The selected device; the CPU when none was selected.
pub fn current() -> Device {
    SELECTED.get().cloned().unwrap_or(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(parse("cpu").unwrap(), None);
        assert_eq!(parse("CUDA").unwrap(), Some(0));
        assert_eq!(parse("cuda:3").unwrap(), Some(3));
        assert!(matches!(parse("cuda:x"), Err(DeviceError::Unknown(_))));
        assert!(matches!(parse("tpu"), Err(DeviceError::Unknown(_))));
        assert!(open("cpu").unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build() {
        let e = open("cuda").unwrap_err();
        assert!(matches!(e, DeviceError::NotBuilt(_)));
        assert!(e.to_string().contains("--features cuda"), "{e}");
    }
}
