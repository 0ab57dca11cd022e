//! Text tokenizer: a byte-level BPE trained in memory, or any `tokenizer.json` (HF Fuyu's included).
//!
//! Special tokens are registered in the tokenizer (so `tokenizer.json` lists them
//! as special) but are never *spelled*: the sequence builder inserts their ids
//! directly, and [`TextTokenizer::encode`] treats a literal `"<image>"` in user
//! text as ordinary characters, so text can never forge a placeholder.
//!
//! # Special-token mapping
//!
//! | role | our tokenizers | HF Fuyu `tokenizer.json` |
//! |---|---|---|
//! | pad | `<pad>` | `\|ENDOFTEXT\|` |
//! | bos | `<bos>` | `<s>` |
//! | eos | `<eos>` | `\|ENDOFTEXT\|` |
//! | boa (begin of answer) | `<boa>` | `<0x04>` |
//! | image patch placeholder | `<image>` | `\|SPEAKER\|` |
//! | end of patch row | `\|NEWLINE\|` | `\|NEWLINE\|` |
//! | audio frame placeholder | `<audio>` | `<audio>` (added) |
//! | between video frames | `\|FRAME\|` | `\|FRAME\|` (added) |
//!
//! [`TextTokenizer::from_file`] picks the Fuyu column when the file contains both
//! `|SPEAKER|` and `|NEWLINE|`; otherwise it looks up our names. Any name that is
//! missing (e.g. `<audio>` and `|FRAME|` in Fuyu's file, or all of them in a foreign
//! tokenizer) is added as a new special token at the end of the vocabulary.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer, TokenizerBuilder,
};

use super::error::FusionError;

/// Our padding token.
pub const PAD: &str = "<pad>";
/// Our beginning-of-sequence token.
pub const BOS: &str = "<bos>";
/// Our end-of-sequence token.
pub const EOS: &str = "<eos>";
/// Our begin-of-answer token.
pub const BOA: &str = "<boa>";
/// Our image patch placeholder.
pub const IMAGE: &str = "<image>";
/// End of a row of patches (same name as Fuyu's).
pub const NEWLINE: &str = "|NEWLINE|";
/// Our audio frame placeholder.
pub const AUDIO: &str = "<audio>";
/// Separator between video frames.
pub const FRAME: &str = "|FRAME|";

/// Our special tokens in id order (ids 0..8 of a tokenizer trained by [`TextTokenizer::train_bpe`]).
pub const SPECIAL_NAMES: [&str; 8] = [PAD, BOS, EOS, BOA, IMAGE, NEWLINE, AUDIO, FRAME];

/// Fuyu's names for pad/eos, bos, begin-of-answer and the image placeholder.
const FUYU_ENDOFTEXT: &str = "|ENDOFTEXT|";
const FUYU_BOS: &str = "<s>";
const FUYU_BOA: &str = "<0x04>";
const FUYU_IMAGE: &str = "|SPEAKER|";

/// Smallest vocabulary [`TextTokenizer::train_bpe`] accepts: 256 byte symbols plus the specials.
pub const MIN_VOCAB: usize = 256 + SPECIAL_NAMES.len();

/// Ids of the special tokens the sequence builder inserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// Padding.
    pub pad: u32,
    /// Beginning of sequence.
    pub bos: u32,
    /// End of sequence (closes an answer).
    pub eos: u32,
    /// Begin of answer (ends a prompt).
    pub boa: u32,
    /// Image patch placeholder.
    pub image: u32,
    /// End of a row of patches.
    pub newline: u32,
    /// Audio frame placeholder.
    pub audio: u32,
    /// Separator between video frames.
    pub frame: u32,
}

impl SpecialTokens {
    /// All ids, in the order pad, bos, eos, boa, image, newline, audio, frame.
    pub fn all(&self) -> [u32; 8] {
        [
            self.pad,
            self.bos,
            self.eos,
            self.boa,
            self.image,
            self.newline,
            self.audio,
            self.frame,
        ]
    }

    /// True when `id` is one of the special ids.
    pub fn contains(&self, id: u32) -> bool {
        self.all().contains(&id)
    }
}

/// A text tokenizer plus the ids of its special tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    /// The wrapped HF tokenizer.
    pub tokenizer: Tokenizer,
    /// Ids of the special tokens.
    pub specials: SpecialTokens,
    /// File it was loaded from, or `<in-memory tokenizer>`; used in error messages.
    pub source: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("specials", &self.specials)
            .finish()
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> FusionError {
    FusionError::Tokenizer {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

impl TextTokenizer {
    /// Trains a byte-level BPE with `vocab_size` entries on an in-memory corpus.
    ///
    /// Ids 0..8 are [`SPECIAL_NAMES`]; then the 256 byte symbols; then merges.
    /// Deterministic: the same corpus and size give the same `tokenizer.json` bytes.
    pub fn train_bpe(corpus: &[String], vocab_size: usize) -> Result<Self, FusionError> {
        let mem = Path::new("<in-memory tokenizer>");
        if vocab_size < MIN_VOCAB {
            return Err(FusionError::config(
                "tokenizer.vocab_size",
                vocab_size,
                "at least 264 (256 byte symbols + 8 special tokens)",
            ));
        }
        let mut tk = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::default()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(
            ByteLevel::default().add_prefix_space(false),
        )))
        .with_decoder(Some(DecoderWrapper::ByteLevel(
            ByteLevelDecoder::default().add_prefix_space(false),
        )))
        .build()
        .map_err(|e| tok_err(mem, e))?;
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(
                SPECIAL_NAMES
                    .iter()
                    .map(|s| AddedToken::from(*s, true))
                    .collect(),
            )
            .initial_alphabet(alphabet)
            .build();
        tk.train(&mut trainer, corpus.iter())
            .map_err(|e| tok_err(mem, e))?;
        let tokenizer: Tokenizer = tk.into();
        Self::with_specials(tokenizer, mem.to_path_buf())
    }

    /// Loads a `tokenizer.json` (ours or HF's, including Fuyu's) and resolves the special tokens.
    ///
    /// See the module docs for the mapping; missing specials are added.
    pub fn from_file(path: &Path) -> Result<Self, FusionError> {
        let bytes = std::fs::read(path).map_err(|source| FusionError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| tok_err(path, e))?;
        Self::with_specials(tokenizer, path.to_path_buf())
    }

    /// Wraps an already-built tokenizer, resolving (and if needed adding) the special tokens.
    pub fn with_specials(mut tokenizer: Tokenizer, source: PathBuf) -> Result<Self, FusionError> {
        let has = |t: &Tokenizer, s: &str| t.token_to_id(s).is_some();
        let fuyu = has(&tokenizer, FUYU_IMAGE) && has(&tokenizer, NEWLINE);
        let names: [&str; 8] = if fuyu {
            [
                FUYU_ENDOFTEXT,
                FUYU_BOS,
                FUYU_ENDOFTEXT,
                FUYU_BOA,
                FUYU_IMAGE,
                NEWLINE,
                AUDIO,
                FRAME,
            ]
        } else {
            SPECIAL_NAMES
        };
        let missing: Vec<AddedToken> = names
            .iter()
            .filter(|n| !has(&tokenizer, n))
            .map(|n| AddedToken::from(*n, true))
            .collect();
        if !missing.is_empty() {
            tokenizer.add_special_tokens(&missing);
        }
        let mut ids = [0u32; 8];
        for (id, name) in ids.iter_mut().zip(names) {
            *id = tokenizer.token_to_id(name).ok_or_else(|| {
                tok_err(
                    &source,
                    format!("special token {name:?} could not be registered"),
                )
            })?;
        }
        // Specials are inserted by id, never recognised in user text.
        tokenizer.set_encode_special_tokens(true);
        let [pad, bos, eos, boa, image, newline, audio, frame] = ids;
        Ok(TextTokenizer {
            tokenizer,
            specials: SpecialTokens {
                pad,
                bos,
                eos,
                boa,
                image,
                newline,
                audio,
                frame,
            },
            source,
        })
    }

    /// The tokenizer as pretty-printed `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String, FusionError> {
        self.tokenizer
            .to_string(true)
            .map_err(|e| tok_err(&self.source, e))
    }

    /// Writes `tokenizer.json` to `path` atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), FusionError> {
        let json = self.to_json()?;
        crate::io::atomic_write(path, json.as_bytes()).map_err(|e| FusionError::Io {
            path: path.to_path_buf(),
            source: e.source,
        })
    }

    /// Token ids of `text`, with no special tokens added (and none recognised in the text).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, FusionError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| tok_err(&self.source, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, skipping every special token.
    pub fn decode(&self, ids: &[u32]) -> Result<String, FusionError> {
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| !self.specials.contains(i))
            .collect();
        self.tokenizer
            .decode(&kept, true)
            .map_err(|e| tok_err(&self.source, e))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The token string of `id`, if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// A small BPE trained on [`builtin_corpus`], for demos and tests (deterministic).
    pub fn builtin() -> Result<Self, FusionError> {
        Self::train_bpe(&builtin_corpus(), 400)
    }
}

/// The fixed English corpus [`TextTokenizer::builtin`] is trained on.
pub fn builtin_corpus() -> Vec<String> {
    const LINES: &[&str] = &[
        "Is there a ring in the image?",
        "Is there a red circle in the image?",
        "Is there an orange square in the picture?",
        "Is there a blue triangle in the image?",
        "How many shapes are there in the image?",
        "How many circles are there?",
        "How many red objects are in the picture?",
        "What do you hear in the audio?",
        "Describe the image.",
        "Describe the sound.",
        "yes",
        "no",
        "There are three shapes: a red circle, a green ring and a blue square.",
        "A dog is barking and a car passes by.",
        "zero one two three four five six seven eight nine ten",
        "The quick brown fox jumps over the lazy dog.",
    ];
    LINES.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_get_the_first_ids() {
        let t = TextTokenizer::builtin().unwrap();
        assert_eq!(t.specials.all(), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(t.vocab_size(), 400);
        assert_eq!(t.id_to_token(4).as_deref(), Some(IMAGE));
    }

    #[test]
    fn round_trip_and_specials_are_not_spelled() {
        let t = TextTokenizer::builtin().unwrap();
        let text = "Is there a <image> ring?";
        let ids = t.encode(text).unwrap();
        assert!(!ids.iter().any(|&i| t.specials.contains(i)), "{ids:?}");
        assert_eq!(t.decode(&ids).unwrap(), text);
        let mut with = vec![t.specials.bos];
        with.extend(&ids);
        with.push(t.specials.eos);
        assert_eq!(t.decode(&with).unwrap(), text);
    }

    #[test]
    fn training_is_deterministic() {
        let a = TextTokenizer::builtin().unwrap().to_json().unwrap();
        let b = TextTokenizer::builtin().unwrap().to_json().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn too_small_vocab_is_an_error() {
        let e = TextTokenizer::train_bpe(&builtin_corpus(), 100).unwrap_err();
        assert!(e.to_string().contains("tokenizer.vocab_size"), "{e}");
    }
}
