//! CHAIR: finding object mentions in captions with per-category synonym lists.

use std::collections::{BTreeMap, HashMap};

use crate::error::{EvalError, Result};

/// Synonyms per object category: category name → words or phrases that name it.
pub type SynonymTable = HashMap<String, Vec<String>>;

/// The synonym table of the synthetic shape categories: the generator's own category names and
/// synonyms (`mmlab_datasets::vocab::synonyms`), the one source of truth for both.
pub fn default_synonyms() -> SynonymTable {
    mmlab_datasets::vocab::synonyms()
        .into_iter()
        .map(|(c, s)| (c.to_string(), s.into_iter().map(String::from).collect()))
        .collect()
}

/// Lower-cased word tokens of a text (maximal runs of letters or digits).
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Regular English plural of a word.
fn plural(word: &str) -> String {
    let b = word.as_bytes();
    let consonant_y = b.len() >= 2 && b[b.len() - 1] == b'y' && !b"aeiou".contains(&b[b.len() - 2]);
    if consonant_y {
        format!("{}ies", &word[..word.len() - 1])
    } else if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|e| word.ends_with(e))
    {
        format!("{word}es")
    } else {
        format!("{word}s")
    }
}

/// Finds object mentions in captions: longest phrase first, plurals included.
#[derive(Clone, Debug)]
pub struct ObjectMatcher {
    phrases: HashMap<Vec<String>, String>,
    max_len: usize,
}

impl ObjectMatcher {
    /// Build a matcher; each category also matches its own name and regular plurals.
    ///
    /// A phrase listed under two categories is an error; a derived plural that collides with a
    /// listed phrase yields to it.
    pub fn new(table: &SynonymTable) -> Result<Self> {
        let sorted: BTreeMap<&String, &Vec<String>> = table.iter().collect();
        let mut listed: HashMap<Vec<String>, String> = HashMap::new();
        for (cat, syns) in &sorted {
            for phrase in std::iter::once(*cat).chain(syns.iter()) {
                let toks = tokens(phrase);
                if toks.is_empty() {
                    return Err(EvalError::Option(format!(
                        "synonym table: category `{cat}` lists an empty phrase"
                    )));
                }
                if let Some(other) = listed.get(&toks) {
                    if other != *cat {
                        return Err(EvalError::Option(format!(
                            "synonym table: `{phrase}` is listed under both `{other}` and `{cat}`"
                        )));
                    }
                }
                listed.insert(toks, (*cat).clone());
            }
        }
        let mut phrases = listed.clone();
        for (cat, syns) in &sorted {
            for phrase in std::iter::once(*cat).chain(syns.iter()) {
                let mut toks = tokens(phrase);
                if let Some(last) = toks.last_mut() {
                    *last = plural(last);
                }
                phrases.entry(toks).or_insert_with(|| (*cat).clone());
            }
        }
        let max_len = phrases.keys().map(Vec::len).max().unwrap_or(1);
        Ok(ObjectMatcher { phrases, max_len })
    }

    /// The category of every object mention in a caption, in order, repeats included.
    pub fn mentions(&self, caption: &str) -> Vec<String> {
        let toks = tokens(caption);
        let mut out = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let longest = self.max_len.min(toks.len() - i);
            let hit = (1..=longest)
                .rev()
                .find_map(|len| self.phrases.get(&toks[i..i + len]).map(|c| (len, c)));
            match hit {
                Some((len, cat)) => {
                    out.push(cat.clone());
                    i += len;
                }
                None => i += 1,
            }
        }
        out
    }

    /// The category a ground-truth object name belongs to (itself when the table does not know it).
    pub fn category(&self, name: &str) -> String {
        self.phrases
            .get(&tokens(name))
            .cloned()
            .unwrap_or_else(|| name.trim().to_lowercase())
    }
}

/// What CHAIR counts in one caption.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptionCheck {
    /// Categories mentioned, in order, repeats included.
    pub mentions: Vec<String>,
    /// The mentions of categories not in the image.
    pub hallucinated: Vec<String>,
    /// Distinct ground-truth categories.
    pub truth: usize,
    /// Distinct ground-truth categories the caption mentions.
    pub covered: usize,
}

/// Check a caption against the objects truly present.
pub fn check_caption(matcher: &ObjectMatcher, caption: &str, objects: &[String]) -> CaptionCheck {
    let mut truth: Vec<String> = objects.iter().map(|o| matcher.category(o)).collect();
    truth.sort();
    truth.dedup();
    let mentions = matcher.mentions(caption);
    let hallucinated: Vec<String> = mentions
        .iter()
        .filter(|m| truth.binary_search(m).is_err())
        .cloned()
        .collect();
    let covered = truth.iter().filter(|t| mentions.contains(t)).count();
    CaptionCheck {
        truth: truth.len(),
        covered,
        mentions,
        hallucinated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_phrase_wins_and_plurals_match() {
        let m = ObjectMatcher::new(&default_synonyms()).unwrap();
        assert_eq!(
            m.mentions("Two hollow squares, a square and three crosses."),
            vec!["frame", "square", "cross"]
        );
        assert_eq!(
            m.mentions("A crescent moon next to a hollow circle"),
            vec!["crescent", "ring"]
        );
        assert_eq!(m.mentions("Rings and rings"), vec!["ring", "ring"]);
        assert_eq!(m.mentions("Nothing here."), Vec::<String>::new());
        assert_eq!(m.category("Hollow Square"), "frame");
        assert_eq!(m.category("teapot"), "teapot");
    }

    #[test]
    fn default_table_uses_the_generators_category_names() {
        let t = default_synonyms();
        for shape in mmlab_datasets::vocab::Shape::ALL {
            assert!(t.contains_key(shape.name()), "{}", shape.name());
        }
        assert_eq!(t.len(), mmlab_datasets::vocab::Shape::ALL.len());
    }

    #[test]
    fn plural_rules() {
        assert_eq!(plural("cross"), "crosses");
        assert_eq!(plural("box"), "boxes");
        assert_eq!(plural("daisy"), "daisies");
        assert_eq!(plural("key"), "keys");
        assert_eq!(plural("star"), "stars");
    }

    #[test]
    fn conflicting_table_is_an_error() {
        let mut t = SynonymTable::new();
        t.insert("a".into(), vec!["thing".into()]);
        t.insert("b".into(), vec!["thing".into()]);
        let err = ObjectMatcher::new(&t).unwrap_err().to_string();
        assert!(err.contains("thing"), "{err}");
    }

    #[test]
    fn caption_check_counts_mentions_with_repeats() {
        let m = ObjectMatcher::new(&default_synonyms()).unwrap();
        let c = check_caption(
            &m,
            "A star, a ring and another star and a heart.",
            &["star".into(), "circle".into()],
        );
        assert_eq!(c.mentions, vec!["star", "ring", "star", "heart"]);
        assert_eq!(c.hallucinated, vec!["ring", "heart"]);
        assert_eq!(c.truth, 2);
        assert_eq!(c.covered, 1);
    }
}
