//! Request bodies for `POST /tasks`: realistic, varied descriptions and priorities.
//!
//! The orchestrator accepts a description of 1–10,000 characters and a priority of 1–10
//! (1 most urgent, 5 the default). Most generated tasks are short one-line jobs with the
//! default priority or close to it; a few carry a long free-text note, non-ASCII names, or
//! sit at the very edge of the limits, so a load test also exercises the unusual inputs.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

/// The longest description the orchestrator accepts, in characters (not bytes).
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;

/// The most urgent priority.
pub const MIN_PRIORITY: u8 = 1;

/// The least urgent priority.
pub const MAX_PRIORITY: u8 = 10;

/// The JSON body of `POST /tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// What the task is about; 1–[`MAX_DESCRIPTION_CHARS`] characters.
    pub description: String,
    /// [`MIN_PRIORITY`] (most urgent) to [`MAX_PRIORITY`].
    pub priority: u8,
    /// Start this many milliseconds after acceptance (a scheduled task); absent: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

const VERBS: &[&str] = &[
    "Resize",
    "Transcode",
    "Send",
    "Generate",
    "Reindex",
    "Recompute",
    "Archive",
    "Validate",
    "Synchronise",
    "Summarise",
    "Back up",
    "Export",
    "Import",
    "Render",
    "Scan",
    "Deduplicate",
    "Refund",
    "Translate",
];

const OBJECTS: &[&str] = &[
    "thumbnail images",
    "the monthly invoice",
    "the welcome email",
    "search index shard",
    "user avatar",
    "CSV export",
    "audit log",
    "PDF report",
    "video upload",
    "shipping label",
    "fraud score",
    "password reset link",
    "nightly metrics rollup",
    "product catalogue",
    "webhook delivery",
];

const SUBJECTS: &[&str] = &[
    "customer",
    "order",
    "tenant Zürich",
    "account café",
    "project Ōsaka",
    "team",
    "store São Paulo",
    "user",
    "warehouse Kraków",
];

const SUFFIXES: &[&str] = &[
    "",
    "",
    "",
    " (retry-safe)",
    " before 09:00 UTC",
    " — requested by support",
    " after the previous batch finished",
    " using the new template",
];

const NOTE_WORDS: &[&str] = &[
    "the",
    "customer",
    "asked",
    "again",
    "because",
    "previous",
    "run",
    "timed",
    "out",
    "while",
    "uploading",
    "batch",
    "retry",
    "with",
    "smaller",
    "chunks",
    "and",
    "notify",
    "on-call",
    "if",
    "it",
    "fails",
    "twice",
    "see",
    "ticket",
    "attached",
    "logs",
    "for",
    "details",
    "queue",
];

/// Priorities 1..=10 weighted so that the default (5) dominates, as it would in real use.
const PRIORITY_WEIGHTS: [u32; 10] = [3, 5, 8, 12, 35, 12, 10, 7, 5, 3];

/// One random task body; the description is 1–[`MAX_DESCRIPTION_CHARS`] characters and the
/// priority [`MIN_PRIORITY`]–[`MAX_PRIORITY`].
pub fn random_task<R: Rng + ?Sized>(rng: &mut R) -> NewTask {
    NewTask {
        description: random_description(rng),
        priority: random_priority(rng),
        delay_ms: None,
    }
}

/// A priority from 1 to 10, most often 5.
pub fn random_priority<R: Rng + ?Sized>(rng: &mut R) -> u8 {
    let total: u32 = PRIORITY_WEIGHTS.iter().sum();
    let mut pick = rng.random_range(0..total);
    for (index, weight) in PRIORITY_WEIGHTS.iter().enumerate() {
        if pick < *weight {
            // index < 10, so the cast cannot truncate.
            return MIN_PRIORITY + index as u8;
        }
        pick -= weight;
    }
    // Unreachable: `pick` is below the sum of the weights.
    5
}

/// A description: usually one line, sometimes with a long note, rarely exactly the maximum.
pub fn random_description<R: Rng + ?Sized>(rng: &mut R) -> String {
    let verb = VERBS.choose(rng).copied().unwrap_or("Process");
    let object = OBJECTS.choose(rng).copied().unwrap_or("item");
    let subject = SUBJECTS.choose(rng).copied().unwrap_or("customer");
    let suffix = SUFFIXES.choose(rng).copied().unwrap_or("");
    let number: u32 = rng.random_range(1..1_000_000);
    let mut description = format!("{verb} {object} for {subject} #{number}{suffix}");

    let roll: f64 = rng.random();
    let target_chars = if roll < 0.001 {
        // The edge of what the API accepts.
        Some(MAX_DESCRIPTION_CHARS)
    } else if roll < 0.03 {
        Some(rng.random_range(200..=8_000))
    } else if roll < 0.15 {
        Some(rng.random_range(80..=200))
    } else {
        None
    };
    if let Some(target_chars) = target_chars {
        append_note(rng, &mut description, target_chars);
    }
    truncate_chars(&mut description, MAX_DESCRIPTION_CHARS);
    description
}

/// Appends a free-text note of random words until `description` has `target_chars` characters.
fn append_note<R: Rng + ?Sized>(rng: &mut R, description: &mut String, target_chars: usize) {
    let mut n_chars = description.chars().count();
    description.push_str(". Note:");
    n_chars += ". Note:".len();
    while n_chars < target_chars {
        let word = NOTE_WORDS.choose(rng).copied().unwrap_or("retry");
        description.push(' ');
        description.push_str(word);
        // The note words are ASCII, so bytes equal characters.
        n_chars += 1 + word.len();
    }
    truncate_chars(description, target_chars);
}

/// Cuts `text` to at most `max_chars` characters, on a character boundary.
fn truncate_chars(text: &mut String, max_chars: usize) {
    if let Some((byte_index, _)) = text.char_indices().nth(max_chars) {
        text.truncate(byte_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn generated_tasks_stay_within_the_api_limits() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let task = random_task(&mut rng);
            let n_chars = task.description.chars().count();
            assert!(
                (1..=MAX_DESCRIPTION_CHARS).contains(&n_chars),
                "description of {n_chars} characters is outside 1..=10000"
            );
            assert!(
                (MIN_PRIORITY..=MAX_PRIORITY).contains(&task.priority),
                "priority {} is outside 1..=10",
                task.priority
            );
        }
    }

    #[test]
    fn generated_tasks_are_varied() {
        let mut rng = StdRng::seed_from_u64(11);
        let tasks: Vec<NewTask> = (0..5_000).map(|_| random_task(&mut rng)).collect();
        let priorities: std::collections::BTreeSet<u8> = tasks.iter().map(|t| t.priority).collect();
        assert_eq!(
            priorities,
            (1..=10).collect(),
            "every priority from 1 to 10 should appear in 5,000 tasks"
        );
        let longest = tasks.iter().map(|t| t.description.chars().count()).max();
        assert!(
            longest.unwrap_or(0) > 1_000,
            "some descriptions should be long, the longest was {longest:?}"
        );
        let distinct: std::collections::HashSet<&str> =
            tasks.iter().map(|t| t.description.as_str()).collect();
        assert!(
            distinct.len() > 4_900,
            "descriptions should rarely repeat, got {} distinct of 5,000",
            distinct.len()
        );
    }

    #[test]
    fn default_priority_is_the_most_common() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0u32; 11];
        for _ in 0..10_000 {
            counts[usize::from(random_priority(&mut rng))] += 1;
        }
        let most_common = (1..=10).max_by_key(|p| counts[*p]);
        assert_eq!(most_common, Some(5), "counts per priority: {counts:?}");
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        let mut text = "ééééé".to_string();
        truncate_chars(&mut text, 3);
        assert_eq!(text, "ééé");
    }
}
