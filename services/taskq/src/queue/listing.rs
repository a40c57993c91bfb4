//! Listing tasks by status, a page at a time, and pausing priority levels.
//!
//! A listing reads what the protocol keeps anyway (the priority streams for `queued` and
//! `running`, the retry and scheduled sets, the dead-letter stream) and two indexes written when
//! tasks finish (`succeeded`, `cancelled`; [`Keys::finished`]). Each page examines at most `limit`
//! candidates and checks each against its record, so its cost is bounded by `limit` whatever the
//! size of the queue: a page may hold fewer tasks than `limit`, even none, and still have a next
//! cursor. See `scripts/list.lua` for the order of each status.

use std::collections::HashMap;
use std::fmt;

use redis::aio::ConnectionLike;

use super::{Queue, QueueError};
use crate::keys::{CONSUMER_GROUP, Keys};
use crate::model::{Priority, Status, TaskId, TaskRecord};

/// The largest page a listing returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// One listing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Which tasks.
    pub status: Status,
    /// Only this priority level.
    pub priority: Option<Priority>,
    /// The page size: 1 ..= [`MAX_LIST_LIMIT`] (clamped).
    pub limit: usize,
    /// Where the previous page ended; `None` for the first page.
    pub cursor: Option<ListCursor>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    /// The tasks, in the listing's order.
    pub tasks: Vec<TaskRecord>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next_cursor: Option<ListCursor>,
}

/// A position in one status's listing, written `A/B` in the API (opaque to clients): for
/// `queued` and `running` a priority and a stream entry id, for `scheduled` and `retrying` a
/// due time and a task id, for `dead`, `succeeded` and `cancelled` an index entry id and how many
/// of its ids were examined.
///
/// In a partitioned queue the listing goes through the partitions in turn, and a cursor into
/// partition `n > 0` is written `n~A/B` (`n~` alone: partition `n` from its start); one of
/// partition 0 is written as in an unpartitioned queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    partition: u16,
    /// Empty (with `b`) for the start of the partition.
    a: String,
    b: String,
}

/// A cursor that no listing of this status could have written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor for status {status}: pass back a next_cursor of the same listing")]
pub struct InvalidCursor {
    /// The listing's status.
    pub status: Status,
}

impl ListCursor {
    /// Parses a cursor of a `status` listing.
    pub fn parse(status: Status, raw: &str) -> Result<Self, InvalidCursor> {
        let invalid = InvalidCursor { status };
        let (partition, raw) = match raw.split_once('~') {
            Some((n, rest)) => {
                // Written by `Display` only: digits, no sign, no leading zero.
                let n = n
                    .parse::<u16>()
                    .ok()
                    .filter(|p| (1..crate::keys::MAX_PARTITIONS).contains(p) && p.to_string() == n)
                    .ok_or(invalid.clone())?;
                if rest.is_empty() {
                    return Ok(Self::start_of(n));
                }
                (n, rest)
            }
            None => (0, raw),
        };
        let (a, b) = raw.split_once('/').ok_or(invalid.clone())?;
        let valid = match status {
            Status::Queued | Status::Running => {
                a.parse::<u8>().is_ok_and(|p| (1..=10).contains(&p)) && is_entry_id(b)
            }
            Status::Scheduled | Status::Retrying => {
                a.parse::<f64>().is_ok_and(f64::is_finite) && TaskId::parse(b).is_ok()
            }
            Status::Dead | Status::Succeeded | Status::Cancelled => {
                is_entry_id(a) && b.parse::<u32>().is_ok()
            }
        };
        if !valid {
            return Err(invalid);
        }
        Ok(Self {
            partition,
            a: a.to_owned(),
            b: b.to_owned(),
        })
    }

    /// The start of partition `partition`'s listing.
    pub(crate) fn start_of(partition: u16) -> Self {
        Self {
            partition,
            a: String::new(),
            b: String::new(),
        }
    }

    /// The partition this cursor points into.
    pub fn partition(&self) -> u16 {
        self.partition
    }
}

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.partition > 0 {
            write!(f, "{}~", self.partition)?;
        }
        if !self.a.is_empty() {
            write!(f, "{}/{}", self.a, self.b)?;
        }
        Ok(())
    }
}

/// A stream entry id: `milliseconds-sequence`.
fn is_entry_id(raw: &str) -> bool {
    raw.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.len() <= 20
            && seq.len() <= 20
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

impl Queue {
    /// One page of the tasks in `query.status` (one script call; see the module documentation).
    pub async fn list<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        query: &ListQuery,
    ) -> Result<TaskPage, QueueError> {
        let keys: &Keys = &self.config.keys;
        let (a, b) = query
            .cursor
            .as_ref()
            .map_or(("", ""), |c| (c.a.as_str(), c.b.as_str()));
        let (next_a, next_b, rows): (String, String, Vec<HashMap<String, String>>) = self
            .scripts
            .list
            .key(self.streams.as_slice())
            .key(keys.retry_schedule())
            .key(keys.scheduled())
            .key(keys.dead_letter())
            .key(keys.finished(Status::Succeeded))
            .key(keys.finished(Status::Cancelled))
            .arg(query.status.as_str())
            .arg(query.priority.map_or(0, Priority::get))
            .arg(query.limit.clamp(1, MAX_LIST_LIMIT))
            .arg(a)
            .arg(b)
            .arg(keys.task_prefix())
            .arg(CONSUMER_GROUP)
            .invoke_async(conn)
            .await?;
        let tasks = rows
            .iter()
            .map(|fields| {
                TaskRecord::from_fields(fields).map_err(|source| QueueError::Corrupt {
                    task_id: fields.get("id").cloned().unwrap_or_default(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let next_cursor = (!next_a.is_empty()).then_some(ListCursor {
            partition: keys.partition().index,
            a: next_a,
            b: next_b,
        });
        Ok(TaskPage { tasks, next_cursor })
    }

    /// Pauses (`true`) or resumes a priority level: a paused level keeps accepting tasks, and
    /// workers start none of its queued ones; a running task of it taken over from a dead worker
    /// still runs.
    pub async fn set_paused<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        priority: Priority,
        paused: bool,
    ) -> Result<(), QueueError> {
        let command = if paused { "SADD" } else { "SREM" };
        let mut pipe = redis::pipe();
        pipe.cmd(command)
            .arg(self.config.keys.paused())
            .arg(priority.get());
        self.write::<i64, _>(conn, pipe).await?;
        Ok(())
    }

    /// The paused priority levels, most urgent first.
    pub async fn paused<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<Vec<Priority>, QueueError> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.config.keys.paused())
            .query_async(conn)
            .await?;
        let mut paused: Vec<Priority> = members
            .iter()
            .filter_map(|m| m.parse::<i64>().ok())
            .filter_map(|p| Priority::parse(p).ok())
            .collect();
        paused.sort();
        Ok(paused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_malformed_ones_are_refused() {
        for (status, raw) in [
            (Status::Queued, "3/1700000000000-0"),
            (Status::Running, "10/1-12"),
            (
                Status::Scheduled,
                "1700000000000/0190c5d2-6a8e-7cc3-9a43-0d5f1e1e2a01",
            ),
            (Status::Dead, "1700000000000-3/0"),
            (Status::Succeeded, "1-0/17"),
            (Status::Queued, "2~3/1700000000000-0"),
            (Status::Dead, "255~"),
        ] {
            let cursor = ListCursor::parse(status, raw).expect(raw);
            assert_eq!(cursor.to_string(), raw);
        }
        for (status, raw) in [
            (Status::Queued, ""),
            (Status::Queued, "0/1-0"),
            (Status::Queued, "5/1"),
            (Status::Queued, "5/-1"),
            (Status::Retrying, "inf/0190c5d2-6a8e-7cc3-9a43-0d5f1e1e2a01"),
            (Status::Retrying, "17/not-a-task"),
            (Status::Cancelled, "1-0/-1"),
            (Status::Cancelled, "1-0/1/2"),
            (Status::Succeeded, "x1-0/1"),
            (Status::Queued, "0~3/1-0"),
            (Status::Queued, "~3/1-0"),
            (Status::Queued, "+1~3/1-0"),
            (Status::Queued, "256~"),
            (Status::Queued, "01~"),
            (Status::Queued, "2~3/1"),
            (Status::Queued, "1~2~3/1-0"),
        ] {
            assert!(ListCursor::parse(status, raw).is_err(), "{status} {raw:?}");
        }
    }
}
