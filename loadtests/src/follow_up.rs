//! Requests a load sends right after an acknowledged submit, about the task it created: a
//! cancel (`DELETE /tasks/{id}`) or a read (`GET /tasks/{id}`).
//!
//! They make a harness run exercise more than submits: cancels race the workers for queued
//! tasks (a cancelled task must never run, a running one must not be cancelled), and reads
//! check that an acknowledged task can be read back. Each is journaled as a [`FollowUpRecord`]
//! next to the submits when the run records.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use goose::prelude::*;
use serde::{Deserialize, Serialize};

/// Shares of acknowledged submits followed at once by another request about the same task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowUps {
    /// Share (0.0–1.0) of acknowledged tasks the load then tries to cancel.
    pub cancel: f64,
    /// Share (0.0–1.0) of acknowledged tasks the load then reads back.
    pub read: f64,
}

impl FollowUps {
    /// Both shares are within 0.0–1.0 and together at most 1.0.
    pub fn validate(&self) -> Result<(), String> {
        for (name, share) in [("cancel", self.cancel), ("read", self.read)] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!(
                    "the {name} share must be within 0.0–1.0, got {share}"
                ));
            }
        }
        if self.cancel + self.read > 1.0 {
            return Err(format!(
                "the cancel and read shares add up to {}, more than 1.0",
                self.cancel + self.read
            ));
        }
        Ok(())
    }

    /// Which follow-up a draw `r` in `[0, 1)` selects, if any.
    pub fn pick(&self, r: f64) -> Option<FollowUpKind> {
        if r < self.cancel {
            Some(FollowUpKind::Cancel)
        } else if r < self.cancel + self.read {
            Some(FollowUpKind::Read)
        } else {
            None
        }
    }
}

/// Scheduled tasks in the load: a share of submits carries a `delay_ms` drawn uniformly from
/// 1 to `max_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Delays {
    /// Share (0.0–1.0) of submits that are scheduled.
    pub share: f64,
    /// Longest delay, in milliseconds (at least 1 when `share` is above 0).
    pub max_ms: u64,
}

impl Delays {
    /// The share is within 0.0–1.0 and a positive share has a positive longest delay.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.share) {
            return Err(format!(
                "the delay share must be within 0.0–1.0, got {}",
                self.share
            ));
        }
        if self.share > 0.0 && self.max_ms == 0 {
            return Err("delayed submits need a longest delay above 0 ms".into());
        }
        Ok(())
    }

    /// The `delay_ms` of one submit, given two draws in `[0, 1)`.
    pub fn pick(&self, r: f64, within: f64) -> Option<u64> {
        (r < self.share).then(|| 1 + ((self.max_ms.saturating_sub(1)) as f64 * within) as u64)
    }
}

/// What a follow-up request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowUpKind {
    /// `DELETE /tasks/{id}`.
    Cancel,
    /// `GET /tasks/{id}`.
    Read,
}

/// One follow-up request and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpRecord {
    /// Cancel or read.
    pub kind: FollowUpKind,
    /// The task it was about.
    pub task_id: String,
    /// Wall-clock time the request was sent, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// From sending to the end of the answer (or the error), in ms.
    pub latency_ms: f64,
    /// The HTTP status; `None` when no answer arrived (transport error or timeout).
    pub status: Option<u16>,
}

/// Sends one follow-up about `task_id` through goose and returns its record. A non-2xx answer
/// is no transaction error here: a 409 for a task that already runs is an expected answer.
pub async fn send_follow_up(
    user: &mut GooseUser,
    kind: FollowUpKind,
    task_id: &str,
) -> Result<FollowUpRecord, Box<TransactionError>> {
    let path = format!("/tasks/{task_id}");
    let method = match kind {
        FollowUpKind::Cancel => GooseMethod::Delete,
        FollowUpKind::Read => GooseMethod::Get,
    };
    let request = GooseRequest::builder()
        .method(method)
        .path(path.as_str())
        .name("/tasks/{id}")
        .build();
    let goose = user.request(request).await?;
    // Goose timed the request from its sending (after the throttle let it go) to the status
    // line; add the time to read the body.
    let to_headers = Duration::from_micros(goose.request.response_time_micros());
    let reading_body = Instant::now();
    let status = match goose.response {
        // the answer is complete only once its body is read
        Ok(response) => {
            let status = response.status().as_u16();
            response.bytes().await.ok().map(|_| status)
        }
        Err(_) => None,
    };
    let latency = to_headers + reading_body.elapsed();
    let sent = SystemTime::now().checked_sub(latency).unwrap_or(UNIX_EPOCH);
    Ok(FollowUpRecord {
        kind,
        task_id: task_id.to_owned(),
        started_unix_ms: sent
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        latency_ms: latency.as_secs_f64() * 1_000.0,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_pick_a_share_of_submits_and_stay_within_the_longest() {
        let delays = Delays {
            share: 0.25,
            max_ms: 2_000,
        };
        assert_eq!(delays.validate(), Ok(()));
        assert_eq!(delays.pick(0.3, 0.5), None);
        assert_eq!(delays.pick(0.1, 0.0), Some(1));
        assert_eq!(delays.pick(0.1, 0.999_999), Some(1_999));
        assert_eq!(Delays::default().pick(0.0, 0.5), None);
        assert!(
            Delays {
                share: 0.1,
                max_ms: 0
            }
            .validate()
            .is_err()
        );
        assert!(
            Delays {
                share: 1.5,
                max_ms: 10
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn shares_pick_their_follow_up_and_are_validated() {
        let both = FollowUps {
            cancel: 0.1,
            read: 0.2,
        };
        assert_eq!(both.validate(), Ok(()));
        assert_eq!(both.pick(0.05), Some(FollowUpKind::Cancel));
        assert_eq!(both.pick(0.25), Some(FollowUpKind::Read));
        assert_eq!(both.pick(0.35), None);
        assert_eq!(FollowUps::default().pick(0.0), None);
        for bad in [
            FollowUps {
                cancel: -0.1,
                read: 0.0,
            },
            FollowUps {
                cancel: 0.0,
                read: 1.5,
            },
            FollowUps {
                cancel: 0.6,
                read: 0.6,
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
