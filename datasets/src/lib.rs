//! Procedural scenes and sounds, question builders and loaders for real benchmark files.
