//! Evaluation harness for multimodal models: tasks, answer parsing, metrics, caching and result files.
