//! Log lines written to stdout in batches: a worker logs one `task_executed` line per execution,
//! and one `write` per line was a system call per task. Lines are appended to one buffer, in
//! order, and written out together:
//!
//! - by [`flush`], which the worker's finisher calls before it records a batch of outcomes, so
//!   the line of every execution whose outcome Redis holds is out of the process first (a
//!   SIGKILL loses only lines of executions whose outcome was not recorded either: they run
//!   again);
//! - at once for warnings and errors (after the lines before them);
//! - when the buffer passes [`FLUSH_AT`] bytes, and every [`FLUSH_EVERY`] by a thread of its own.

use std::io::Write;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes past which the next line flushes the buffer.
pub const FLUSH_AT: usize = 64 * 1024;

/// Longest a line waits in the buffer when nothing else flushes it.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn buffer() -> MutexGuard<'static, Vec<u8>> {
    BUFFER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_out(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    // Nowhere to report a failed log write; the lines are dropped, as stdout's own writer would.
    let _ = out.write_all(buffer);
    let _ = out.flush();
    buffer.clear();
}

/// Writes every buffered line to stdout, in order, with one `write`.
pub fn flush() {
    write_out(&mut buffer());
}

/// The tracing writer: appends each formatted event to the buffer (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferedStdout;

impl BufferedStdout {
    /// The writer, with the thread that flushes every [`FLUSH_EVERY`] (started once).
    pub fn start() -> Self {
        static FLUSHER: Once = Once::new();
        FLUSHER.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(|| {
                    loop {
                        std::thread::sleep(FLUSH_EVERY);
                        flush();
                    }
                });
        });
        Self
    }
}

/// One event's writer (tracing-subscriber formats an event, then writes it whole).
#[derive(Debug)]
pub struct Line {
    at_once: bool,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = buffer();
        buffer.extend_from_slice(bytes);
        if self.at_once || buffer.len() >= FLUSH_AT {
            write_out(&mut buffer);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { at_once: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        // Warnings and errors are out at once (more verbose levels compare greater).
        Line {
            at_once: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffered() -> String {
        String::from_utf8_lossy(&buffer()).into_owned()
    }

    #[test]
    fn info_lines_wait_in_the_buffer_and_a_warning_writes_them_out_before_itself() {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(BufferedStdout)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(event = "first", "a line of the hot path");
            tracing::info!(event = "second", "another");
            let held = buffered();
            assert!(
                held.contains("\"first\"") && held.contains("\"second\""),
                "{held}"
            );
            assert_eq!(held.lines().count(), 2, "{held}");
            tracing::warn!("something is wrong");
            assert_eq!(
                buffered(),
                "",
                "a warning writes out the lines before it and itself"
            );
            tracing::info!(event = "third", "after");
            assert!(buffered().contains("\"third\""));
            flush();
            assert_eq!(buffered(), "");
        });
    }
}
