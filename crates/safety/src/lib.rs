//! Content moderation for videogen: a [`Moderator`] built from denylists.
//!
//! This is the placeholder for a later two-sided safety system (classifiers
//! on prompts and outputs). It is deliberately simple, but it is real: it
//! blocks what it claims to block and is honest about its limits.
//!
//! - **Prompt side**: phrases grouped by category (a short built-in list plus
//!   [`DenylistModerator::with_terms`]) are matched on normalised text, on
//!   word boundaries, against both the prompt and the style. Normalisation
//!   folds case, full-width/compatibility forms, accents, common Cyrillic and
//!   Greek look-alikes, invisible characters, punctuation/whitespace runs and
//!   simple leetspeak (see [`normalize_tokens`]).
//! - **Output side**: each sampled frame's 64-bit [`dhash()`] is compared with a
//!   denylist of perceptual hashes of known prohibited imagery (the way
//!   industry hash-matching works); a Hamming distance at or below the
//!   threshold blocks the video.
//!
//! Block reasons never repeat the matched phrase, so they are safe to show
//! the submitter whatever the category.
//!
//! # Layout
//! - `lib.rs`: [`DenylistModerator`], the built-in list, the `Moderator` impl.
//! - [`text`]: normalisation and phrase matching.
//! - [`dhash`](mod@dhash): the frame hash, Hamming distance, hash-list files.

pub mod dhash;
pub mod text;

pub use dhash::{DEFAULT_HASH_THRESHOLD, HashListError, dhash, hamming, load_hash_file, parse_hash_list};
pub use text::normalize_tokens;

use async_trait::async_trait;
use std::path::Path;
use text::Phrase;
use videogen_core::moderation::{FrameSample, Moderator, Verdict};

/// Category reported when a frame matches the image hash denylist.
pub const IMAGE_DENYLIST_CATEGORY: &str = "denylist_image";
/// Category reported when a frame cannot be checked (malformed sample).
pub const UNCHECKABLE_FRAME_CATEGORY: &str = "moderation_error";

/// The built-in phrase list: short, unambiguous, non-graphic.
pub const BUILTIN_TERMS: &[(&str, &[&str])] = &[
    (
        "csam",
        &["csam", "child sexual abuse material", "child pornography", "child porn"],
    ),
    (
        "weapons",
        &[
            "pipe bomb",
            "how to build a bomb",
            "how to make a bomb",
            "nerve agent synthesis",
        ],
    ),
    // Safe to use in tests and smoke checks of a deployment.
    ("test", &["forbidden-test-term"]),
];

#[derive(Debug, Clone)]
struct Entry {
    category: String,
    phrase: Phrase,
}

/// A [`Moderator`] backed by a phrase denylist and an image-hash denylist.
#[derive(Debug, Clone)]
pub struct DenylistModerator {
    entries: Vec<Entry>,
    blocked_hashes: Vec<u64>,
    hash_threshold: u32,
}

impl Default for DenylistModerator {
    fn default() -> Self {
        Self::new()
    }
}

impl DenylistModerator {
    /// The built-in phrase list, no blocked image hashes,
    /// threshold [`DEFAULT_HASH_THRESHOLD`].
    pub fn new() -> Self {
        BUILTIN_TERMS.iter().fold(Self::empty(), |m, (category, terms)| {
            m.with_terms(category, terms.iter().copied())
        })
    }

    /// No phrases and no hashes: allows everything until configured.
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
            blocked_hashes: Vec::new(),
            hash_threshold: DEFAULT_HASH_THRESHOLD,
        }
    }

    /// The built-in list plus the hashes in `path` (see [`parse_hash_list`]).
    pub fn from_hash_file(path: &Path) -> Result<Self, HashListError> {
        Ok(Self::new().with_blocked_hashes(load_hash_file(path)?))
    }

    /// Adds phrases under `category`. Phrases that normalise to nothing
    /// (only punctuation or whitespace) are ignored.
    pub fn with_terms<I, S>(mut self, category: &str, terms: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.entries.extend(terms.into_iter().filter_map(|t| {
            Phrase::new(t.as_ref()).map(|phrase| Entry {
                category: category.to_string(),
                phrase,
            })
        }));
        self
    }

    /// Adds perceptual hashes of known prohibited images.
    pub fn with_blocked_hashes(mut self, hashes: Vec<u64>) -> Self {
        self.blocked_hashes.extend(hashes);
        self
    }

    /// Sets the Hamming-distance threshold (inclusive) for image matches.
    pub fn with_hash_threshold(mut self, threshold: u32) -> Self {
        self.hash_threshold = threshold;
        self
    }

    /// The category of the first denylisted phrase found in `text`.
    pub fn matched_category(&self, text: &str) -> Option<&str> {
        let tokens = normalize_tokens(text);
        if tokens.is_empty() {
            return None;
        }
        self.entries
            .iter()
            .find(|e| e.phrase.matches(&tokens))
            .map(|e| e.category.as_str())
    }

    /// Whether `hash` is within the threshold of a denylisted hash.
    pub fn hash_is_blocked(&self, hash: u64) -> bool {
        self.blocked_hashes
            .iter()
            .any(|&b| hamming(b, hash) <= self.hash_threshold)
    }

    fn check_text(&self, prompt: &str, style: Option<&str>) -> Verdict {
        let fields = [("prompt", Some(prompt)), ("style", style)];
        for (field, text) in fields {
            if let Some(category) = text.and_then(|t| self.matched_category(t)) {
                return Verdict::Block {
                    category: category.to_string(),
                    reason: format!("The {field} was rejected by the content policy (category: {category})."),
                };
            }
        }
        Verdict::Allow
    }

    fn check_frame_hashes(&self, frames: &[FrameSample]) -> Verdict {
        for frame in frames {
            let expected = (frame.width as usize)
                .checked_mul(frame.height as usize)
                .and_then(|n| n.checked_mul(3));
            if frame.width == 0 || frame.height == 0 || expected != Some(frame.rgb.len()) {
                // Fail closed: an output we cannot check is not shown.
                return Verdict::Block {
                    category: UNCHECKABLE_FRAME_CATEGORY.to_string(),
                    reason: "The generated video could not be checked by the content policy.".to_string(),
                };
            }
            if self.blocked_hashes.is_empty() {
                continue;
            }
            if self.hash_is_blocked(dhash(frame.width, frame.height, &frame.rgb)) {
                return Verdict::Block {
                    category: IMAGE_DENYLIST_CATEGORY.to_string(),
                    reason: "The generated video matched known prohibited imagery.".to_string(),
                };
            }
        }
        Verdict::Allow
    }
}

#[async_trait]
impl Moderator for DenylistModerator {
    async fn check_prompt(&self, prompt: &str, style: Option<&str>) -> Verdict {
        self.check_text(prompt, style)
    }

    /// Prompts were checked before the job was accepted, so only the frames
    /// are checked here.
    async fn check_frames(&self, _prompt: &str, frames: &[FrameSample]) -> Verdict {
        self.check_frame_hashes(frames)
    }
}

#[cfg(test)]
mod tests;
