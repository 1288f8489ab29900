//! Prompt normalisation and word-boundary phrase matching.
//!
//! Text is folded so that trivial obfuscations land on the same tokens as the
//! plain spelling:
//! 1. compatibility decomposition (NFKD) with combining marks dropped, so
//!    full-width letters, ligatures and accents fold (`ｆｏｏ`, `ﬁ`, `é`);
//! 2. zero-width and other invisible format characters removed;
//! 3. Unicode lowercase;
//! 4. a few common Cyrillic/Greek look-alikes mapped to Latin;
//! 5. the text split into tokens on anything that is not a letter, digit,
//!    `@` or `$` (so whitespace and punctuation runs collapse);
//! 6. in tokens that contain a letter, leetspeak undone
//!    (`0→o 1→i 3→e 4→a 5→s 7→t @→a $→s`); pure numbers are kept.
//!
//! A phrase matches when the concatenation of a run of *whole* prompt tokens
//! equals the concatenation of the phrase's tokens. That keeps word
//! boundaries ("classic" never matches "ass") while still catching spacing
//! tricks such as `f.o.r.b.i.d.d.e.n` or `forbidden-testterm`.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Splits `text` into normalised tokens (see the module docs).
pub fn normalize_tokens(text: &str) -> Vec<String> {
    let folded: String = text
        .nfkd()
        .filter(|c| !is_combining_mark(*c) && !is_invisible(*c))
        .flat_map(char::to_lowercase)
        .map(fold_confusable)
        .collect();
    folded
        .split(|c: char| !(c.is_alphanumeric() || c == '@' || c == '$'))
        .filter_map(|raw| {
            let token: String = if raw.chars().any(char::is_alphabetic) {
                raw.chars().map(undo_leet).collect()
            } else {
                raw.chars().filter(char::is_ascii_digit).collect()
            };
            (!token.is_empty()).then_some(token)
        })
        .collect()
}

/// A denylisted phrase, pre-normalised.
#[derive(Debug, Clone)]
pub(crate) struct Phrase {
    /// The phrase's tokens concatenated, e.g. `forbiddentestterm`.
    joined: String,
}

impl Phrase {
    /// `None` when the phrase normalises to nothing (e.g. only punctuation).
    pub(crate) fn new(phrase: &str) -> Option<Self> {
        let joined = normalize_tokens(phrase).concat();
        (!joined.is_empty()).then_some(Self { joined })
    }

    /// Whether a run of whole `tokens` spells this phrase.
    pub(crate) fn matches(&self, tokens: &[String]) -> bool {
        let target = self.joined.as_str();
        (0..tokens.len()).any(|start| {
            let mut rest = target;
            for token in &tokens[start..] {
                match rest.strip_prefix(token.as_str()) {
                    Some("") => return true,
                    Some(r) => rest = r,
                    None => return false,
                }
            }
            false
        })
    }
}

fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' // soft hyphen
            | '\u{034F}' // combining grapheme joiner
            | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' // Hangul fillers (render as nothing)
            | '\u{180E}' // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space/joiners, direction marks
            | '\u{202A}'..='\u{202E}' // bidi embeddings
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{FEFF}' // zero-width no-break space
            | '\u{2800}' // Braille blank
    )
}

/// Lowercase Cyrillic, Greek and Armenian letters that render like Latin ones.
fn fold_confusable(c: char) -> char {
    match c {
        'а' | 'α' => 'a',
        'в' | 'β' => 'b',
        'с' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' => 'e',
        'ɡ' => 'g',
        'һ' | 'н' | 'հ' => 'h',
        'і' | 'ι' | 'ı' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'η' => 'n',
        'о' | 'ο' | 'օ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'ѕ' | 'ſ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'ս' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' => 'y',
        other => other,
    }
}

fn undo_leet(c: char) -> char {
    match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        normalize_tokens(s)
    }

    #[test]
    fn normalisation() {
        assert_eq!(toks("  Hello,   WORLD!! "), ["hello", "world"]);
        assert_eq!(toks("ｆｏｒｂｉｄｄｅｎ"), ["forbidden"]);
        assert_eq!(toks("ﬁne café"), ["fine", "cafe"]);
        assert_eq!(toks("f0rb1dd3n t357"), ["forbidden", "test"]);
        assert_eq!(toks("p@$$"), ["pass"]);
        assert_eq!(toks("1080 x 720p"), ["1080", "x", "t2op"]);
        assert_eq!(toks("zero\u{200B}width"), ["zerowidth"]);
        // Cyrillic о and е in a Latin word.
        assert_eq!(toks("fоrbiddеn"), ["forbidden"]);
        assert!(toks("... --- !!!").is_empty());
    }

    #[test]
    fn phrase_matching_respects_word_boundaries() {
        let p = Phrase::new("ass").unwrap();
        assert!(!p.matches(&toks("a classic car")));
        assert!(!p.matches(&toks("assassin")));
        assert!(p.matches(&toks("an ass")));
        let p = Phrase::new("forbidden-test-term").unwrap();
        assert!(p.matches(&toks("say forbidden test term now")));
        assert!(p.matches(&toks("f.o.r.b.i.d.d.e.n test-term")));
        assert!(p.matches(&toks("forbiddentestterm")));
        assert!(!p.matches(&toks("forbidden test terminal")));
        assert!(!p.matches(&toks("unforbidden test term")));
        assert!(!p.matches(&toks("forbidden test")));
        assert!(Phrase::new(" -- ").is_none());
    }
}
