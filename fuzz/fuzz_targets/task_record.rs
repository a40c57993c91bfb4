//! Fuzzes the task decoder: any hash a Redis could hold (another version's, a corrupted one) must
//! decode to a record or an error, never panic; a decoded record must survive a JSON round trip.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use taskq::TaskRecord;

const FIELDS: &[&str] = &[
    "v", "id", "description", "priority", "status", "attempts", "max_attempts", "created_at",
    "started_at", "finished_at", "worker", "result", "error",
];

fuzz_target!(|input: (Vec<(u8, String)>, String, i64)| {
    let (pairs, description, priority) = input;
    let mut fields: HashMap<String, String> = HashMap::new();
    for (selector, value) in pairs {
        fields.insert(FIELDS[usize::from(selector) % FIELDS.len()].to_owned(), value);
    }
    if let Ok(record) = TaskRecord::from_fields(&fields) {
        let json = serde_json::to_string(&record).expect("a decoded record serialises");
        let back: TaskRecord = serde_json::from_str(&json).expect("and deserialises");
        assert_eq!(back.id, record.id);
        assert_eq!(back.status, record.status);
    }
    // Validation at the edge: parse never panics, and accepts exactly the documented ranges.
    let n_chars = description.chars().count();
    let blank = description.chars().all(char::is_whitespace);
    assert_eq!(
        taskq::Description::parse(description).is_ok(),
        (1..=10_000).contains(&n_chars) && !blank
    );
    assert_eq!(taskq::Priority::parse(priority).is_ok(), (1..=10).contains(&priority));
});
