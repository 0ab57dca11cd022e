//! Answer parsers: POPE yes/no (the POPE authors' rule) and counting (first integer or number word).

use serde::{Deserialize, Serialize};

/// A yes/no answer read from free text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct YesNo {
    /// The verdict of the official POPE rule: `true` = "yes".
    pub yes: bool,
    /// Whether the text says so explicitly (a `yes` word for a yes, a `no`/`not` word and no
    /// `yes` word for a no); `false` marks answers that were neither clearly yes nor no.
    pub clear: bool,
}

/// Parse a yes/no answer with the POPE authors' rule.
///
/// The rule (POPE `evaluate.py`): keep the text before the first `.`, remove commas, split on
/// single spaces, and answer "no" if any word is exactly `No`, `not` or `no`; otherwise "yes".
/// This is reproduced byte for byte, so "I cannot tell" is a yes, as in the paper's numbers.
///
/// `clear` is our addition: the first sentence is split on whitespace, each word trimmed of
/// punctuation and lower-cased; a yes verdict is clear when such a word is `yes` and none is
/// `no`/`not`, a no verdict is clear when no word is `yes`.
pub fn parse_yes_no(text: &str) -> YesNo {
    let first = match text.find('.') {
        Some(i) => &text[..i],
        None => text,
    };
    // Removing commas before splitting on ' ' equals splitting first and removing them per word.
    let official_no = first.split(' ').any(|w| {
        eq_without_commas(w, "No") || eq_without_commas(w, "not") || eq_without_commas(w, "no")
    });
    let mut yes_word = false;
    let mut no_word = false;
    for w in first.split_whitespace() {
        let w = w.trim_matches(|c: char| !c.is_alphanumeric());
        let lower_is = |t: &str| {
            let mut a = w.chars().filter(|&c| c != ',');
            let mut b = t.chars();
            loop {
                match (a.next(), b.next()) {
                    (None, None) => return true,
                    (Some(x), Some(y)) if x.to_ascii_lowercase() == y => {}
                    _ => return false,
                }
            }
        };
        if lower_is("yes") {
            yes_word = true;
        } else if lower_is("no") || lower_is("not") {
            no_word = true;
        }
    }
    let clear = if official_no {
        !yes_word
    } else {
        yes_word && !no_word
    };
    YesNo {
        yes: !official_no,
        clear,
    }
}

/// Whether `word` with its commas removed is exactly `target`.
fn eq_without_commas(word: &str, target: &str) -> bool {
    let mut a = word.chars().filter(|&c| c != ',');
    let mut b = target.chars();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// Number words read by [`parse_count`], indexed by their value.
pub const NUMBER_WORDS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

/// Parse a count: the first integer or number word (zero…twenty) in the text.
///
/// The text is read as a sequence of tokens, each a maximal run of ASCII digits or of letters;
/// the first digit run that fits a `u32`, or the first letter run that is a number word
/// (case-insensitive), gives the count. When the text holds no number at all, the words `none`
/// and `no` ("There are no rings") read as zero. Anything else is `None` (unparsed).
pub fn parse_count(text: &str) -> Option<u32> {
    let mut saw_none_word = false;
    let bytes = text.as_bytes();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_ascii_digit() {
            let mut end = start + 1;
            while let Some(&(i, d)) = chars.peek() {
                if d.is_ascii_digit() {
                    end = i + 1;
                    chars.next();
                } else {
                    break;
                }
            }
            // Digits are ASCII, so the byte range is valid UTF-8.
            if let Some(n) = std::str::from_utf8(&bytes[start..end])
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
            {
                return Some(n);
            }
        } else if c.is_alphabetic() {
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if d.is_alphabetic() {
                    end = i + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &text[start..end];
            if let Some(v) = NUMBER_WORDS
                .iter()
                .position(|w| w.eq_ignore_ascii_case(word))
            {
                return Some(v as u32);
            }
            if word.eq_ignore_ascii_case("none") || word.eq_ignore_ascii_case("no") {
                saw_none_word = true;
            }
        }
    }
    if saw_none_word {
        Some(0)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yn(text: &str) -> (bool, bool) {
        let p = parse_yes_no(text);
        (p.yes, p.clear)
    }

    #[test]
    fn pope_rule_on_real_answer_styles() {
        assert_eq!(yn("Yes."), (true, true));
        assert_eq!(yn("Yes"), (true, true));
        assert_eq!(yn("No, there is not."), (false, true));
        assert_eq!(yn("No."), (false, true));
        assert_eq!(yn("yes there is a dog"), (true, true));
        assert_eq!(yn("There is no cat"), (false, true));
        assert_eq!(yn("I cannot tell"), (true, false));
        assert_eq!(yn("There is a dog in the image."), (true, false));
        assert_eq!(yn(""), (true, false));
    }

    #[test]
    fn pope_rule_quirks_are_reproduced() {
        // Only the first sentence counts.
        assert_eq!(yn("Yes. There is no cat."), (true, true));
        // Words are split on single spaces and compared case-sensitively.
        assert_eq!(yn("NO"), (true, false));
        assert_eq!(yn("No!"), (true, false));
        assert_eq!(yn("Not really"), (true, false));
        // Commas are removed before splitting, so "no," is the word "no".
        assert_eq!(yn("no, it is not"), (false, true));
        // A "no" beats a "yes" in the official rule; we flag the contradiction.
        assert_eq!(yn("Yes but not clearly"), (false, false));
    }

    #[test]
    fn count_parser_on_real_answer_styles() {
        assert_eq!(parse_count("3"), Some(3));
        assert_eq!(parse_count("three apples"), Some(3));
        assert_eq!(parse_count("There are 12."), Some(12));
        assert_eq!(parse_count("none"), Some(0));
        assert_eq!(parse_count("There are no rings"), Some(0));
        assert_eq!(parse_count("Zero"), Some(0));
        assert_eq!(parse_count("Twenty"), Some(20));
        assert_eq!(parse_count("I see 2 rings and 3 stars"), Some(2));
        assert_eq!(parse_count("No, there are four."), Some(4));
        assert_eq!(parse_count("I cannot tell"), None);
        assert_eq!(parse_count(""), None);
        // Number words only as whole words.
        assert_eq!(parse_count("someone is there"), None);
        assert_eq!(parse_count("often"), None);
        // Digits glued to letters still count.
        assert_eq!(parse_count("3rd"), Some(3));
        assert_eq!(parse_count("Ünïcode 7"), Some(7));
        // An integer too large for u32 is skipped.
        assert_eq!(parse_count("99999999999 or 5"), Some(5));
    }
}
