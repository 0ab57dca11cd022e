//! mmlab: a workbench for native (early-fusion) multimodal models.
//!
//! See `DESIGN.md` in the shared folder for the map of the workspace.

pub mod ablate;
pub mod cli;
pub mod device;
pub mod eval_data;
pub mod fusion;
pub mod io;
pub mod kernels;
pub mod model;
pub mod openai;
pub mod train;
pub mod tui;
