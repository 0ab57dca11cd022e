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

/// How another harness reads a yes/no answer: yes, no, or neither (not a yes/no answer to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading {
    /// Read as "yes".
    Yes,
    /// Read as "no".
    No,
    /// Neither: lmms-eval's answers that are not exactly `yes`/`no`, VLMEvalKit's "Unknown".
    Other,
}

impl Reading {
    /// The reading as written in `samples.jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reading::Yes => "yes",
            Reading::No => "no",
            Reading::Other => "other",
        }
    }
}

/// Read a yes/no answer as lmms-eval's POPE task does: exact match after lowercasing and
/// stripping white space, so `"Yes."` or `"yes, there is"` is neither yes nor no.
///
/// Reproduces `pope_process_results` in lmms-eval's `lmms_eval/tasks/pope/utils.py`
/// (EvolvingLMMs-Lab/lmms-eval): `pred = results[0].lower().strip()` compared with the
/// ground truth `"yes"`/`"no"`; its aggregations count `pred == "yes"` as a yes prediction and
/// only `pred == "no"` as a no (see [`crate::readings`]).
pub fn read_lmms_eval(text: &str) -> Reading {
    match text.to_lowercase().trim() {
        "yes" => Reading::Yes,
        "no" => Reading::No,
        _ => Reading::Other,
    }
}

/// The characters VLMEvalKit's `process_punctuation` treats (`vlmeval/smp/misc.py`).
const VLMEVAL_PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// VLMEvalKit's `process_punctuation` (`vlmeval/smp/misc.py`, the VQA evaluation's rule), quirks
/// included: each of [`VLMEVAL_PUNCT`] is deleted when the *original* text has it next to a space
/// (or has a digit-comma-digit anywhere), else replaced by a space; then a `.` not followed by a
/// digit is deleted, at most 32 times (the code passes `re.UNICODE`, 32, as `re.sub`'s `count`).
/// Other characters (`:`, `'`, `*`, …) stay. Digits are ASCII here (Python's `\d` also takes other
/// scripts' decimal digits).
fn vlmeval_process_punctuation(input: &str) -> String {
    let chars: Vec<char> = input.chars().collect();
    let comma_strip = chars
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == ',' && w[2].is_ascii_digit());
    let mut out: Vec<char> = chars.clone();
    for p in VLMEVAL_PUNCT {
        let spaced = chars
            .windows(2)
            .any(|w| (w[0] == p && w[1] == ' ') || (w[0] == ' ' && w[1] == p));
        if spaced || comma_strip {
            out.retain(|&c| c != p);
        } else {
            for c in out.iter_mut().filter(|c| **c == p) {
                *c = ' ';
            }
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in out.iter().enumerate() {
        let next_is_digit = out.get(i + 1).is_some_and(|d| d.is_ascii_digit());
        if c == '.' && !next_is_digit && removed < 32 {
            removed += 1;
            continue;
        }
        result.push(c);
    }
    result
}

/// Read a yes/no answer with VLMEvalKit's `YOrN_Extraction` (no LLM judge): lowercase, apply its
/// `process_punctuation`, split on white space; "yes" when the words hold `yes` and not `no`,
/// "no" when they hold `no` and not `yes`, otherwise "Unknown" ([`Reading::Other`]), which
/// VLMEvalKit scores as wrong.
///
/// Reproduces `YOrN_Extraction` in VLMEvalKit's `vlmeval/dataset/utils/yorn.py`
/// (open-compass/VLMEvalKit) with `process_punctuation` from `vlmeval/smp/misc.py`. So `"Yes."`
/// is yes, `"No, there is not."` is no, `"Yes: a dog"` is Unknown (the word is `yes:`), and
/// `"yes and no"` is Unknown.
pub fn read_vlmevalkit(text: &str) -> Reading {
    let processed = vlmeval_process_punctuation(&text.to_lowercase());
    let (mut yes, mut no) = (false, false);
    for w in processed.split_whitespace() {
        yes |= w == "yes";
        no |= w == "no";
    }
    match (yes, no) {
        (true, false) => Reading::Yes,
        (false, true) => Reading::No,
        _ => Reading::Other,
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

    #[test]
    fn lmms_eval_reading_is_exact_match() {
        assert_eq!(read_lmms_eval("yes"), Reading::Yes);
        assert_eq!(read_lmms_eval("  YES \n"), Reading::Yes);
        assert_eq!(read_lmms_eval("No"), Reading::No);
        assert_eq!(read_lmms_eval("Yes."), Reading::Other);
        assert_eq!(read_lmms_eval("no, there is not"), Reading::Other);
        assert_eq!(read_lmms_eval(""), Reading::Other);
    }

    #[test]
    fn vlmevalkit_reading_follows_its_punctuation_rule() {
        assert_eq!(read_vlmevalkit("Yes."), Reading::Yes);
        assert_eq!(read_vlmevalkit("YES"), Reading::Yes);
        assert_eq!(read_vlmevalkit("No, there is not."), Reading::No);
        assert_eq!(read_vlmevalkit("There is no dog."), Reading::No);
        assert_eq!(read_vlmevalkit("I cannot tell"), Reading::Other);
        assert_eq!(read_vlmevalkit("Yes, but no."), Reading::Other);
        assert_eq!(read_vlmevalkit(""), Reading::Other);
        // ':' and '\'' are not in its punctuation list: the words are `yes:` and `no's`.
        assert_eq!(read_vlmevalkit("Yes: a dog"), Reading::Other);
        assert_eq!(read_vlmevalkit("no's"), Reading::Other);
        // A '-' with no space beside it becomes a space.
        assert_eq!(read_vlmevalkit("yes-there is"), Reading::Yes);
        // With a space beside it, it is deleted instead, gluing the words.
        assert_eq!(read_vlmevalkit("yes-there is -"), Reading::Other);
        // A period before a digit stays, and "yes.5" is one word.
        assert_eq!(read_vlmevalkit("yes.5"), Reading::Other);
        assert_eq!(vlmeval_process_punctuation("a.b.3"), "ab.3");
        assert_eq!(vlmeval_process_punctuation("1,000 (yes)"), "1000 yes");
        assert_eq!(vlmeval_process_punctuation("(yes)"), " yes ");
    }
}
