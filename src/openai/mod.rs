//! OpenAI-compatible chat completions, both ways: a client that evaluates any served model
//! (`mmlab eval … --model openai:URL`) and a server that puts mmlab's models behind
//! `/v1/chat/completions` (`mmlab serve`), so other harnesses (lmms-eval, VLMEvalKit, any
//! OpenAI client) can evaluate them.
//!
//! Media travel inside the request as base64 data URLs (`image_url`) and `input_audio` parts,
//! the shapes vLLM, SGLang, llama.cpp's server and the OpenAI API accept; nothing is fetched
//! from the network.

pub mod client;
pub mod server;
pub mod wire;

pub use client::{ClientOptions, OpenAiResponder};
pub use server::{serve, ServeOptions};
