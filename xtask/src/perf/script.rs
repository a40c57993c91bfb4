//! The enqueue script exactly as `taskq` loads it, for the ceilings (`redis-benchmark` and the
//! bare server) so they cost Redis the same work per task as the orchestrator.

use taskq::model::RECORD_VERSION;

const PRELUDE: &str = include_str!("../../../services/taskq/src/scripts/prelude.lua");
const ENQUEUE: &str = include_str!("../../../services/taskq/src/scripts/enqueue.lua");

/// The source of the enqueue script, assembled as `taskq::queue` assembles it.
pub fn enqueue_script_source() -> String {
    format!("local RECORD_VERSION = '{RECORD_VERSION}'\n{PRELUDE}\n{ENQUEUE}")
}

/// The description every benchmark request carries: one realistic line.
pub const DESCRIPTION: &str = "Resize thumbnail images for customer 4711 (order 2024-118)";

/// The JSON body of every benchmark `POST /tasks`.
pub fn post_body() -> String {
    serde_json::json!({ "description": DESCRIPTION, "priority": 5 }).to_string()
}
