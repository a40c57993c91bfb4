//! Progress of `harness run`: a live line per running scenario on a terminal, a few plain log
//! lines elsewhere.
//!
//! ```text
//! ⠙ worker-restart load 12.3s | acked 412 | errors 3 | executed -      (a terminal: redrawn every 200 ms)
//! worker-restart: phase drain after 14.5s: acked 560, errors 3, executed -   (CI, a pipe: one line per phase)
//! ```
//!
//! A scenario goes through the [`Phase`]s `starting` (images, cluster start), `load` (goose
//! runs, steps are applied), `drain` (waiting until every acknowledged task has finished) and
//! `reconcile` (reading the final states), then ends `passed` or `FAILED`. The counts are the
//! submits acknowledged and those that ended without an acknowledgement (`fail` and `info`),
//! read lock-free from the load's [`LoadProgress`], and the distinct tasks executed, known from
//! the drain on (during the load it shows `-`: reading the workers' logs costs too much to do it
//! more often than the drain does).
//!
//! The runner calls the hooks of [`ScenarioProgress`] at each phase change; they either move an
//! indicatif spinner (when [`enable_bars`] said so: `harness run` on a terminal, without
//! `--no-progress`) or log one `tracing` line per phase. Bars are off until [`enable_bars`] turns
//! them on, so a library user (the integration tests) never gets one.
//!
//! Log lines and the bar share stderr: `main` installs [`LogWriter`] as the `tracing`
//! subscriber's writer, which hides the bars while a line is written (one global
//! [`MultiProgress`], [`MultiProgress::suspend`]) and writes straight to stderr when no bar is
//! shown. Output that bypasses `tracing` (the image build's cargo) runs under
//! [`ScenarioProgress::hidden`], with the bar off the screen. This is the whole integration,
//! some forty lines, so the `tracing-indicatif` crate (a bar per span, a layer of its own) was
//! not worth a dependency: the bar here follows the scenario's phases, not spans.

use std::{
    collections::HashSet,
    fmt,
    io::{self, IsTerminal, Write},
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::load::{LoadCounts, LoadProgress};
use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};

use crate::{executions::Execution, report::Report};

/// How often a bar is redrawn (spinner, elapsed time, counts).
const TICK: Duration = Duration::from_millis(200);

/// Where a scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Preparing images or binaries and starting the cluster.
    Starting,
    /// The load runs and the steps are applied.
    Load,
    /// Waiting for every acknowledged task to finish.
    Drain,
    /// Waiting for a quiet queue and reading every task's final state.
    Reconcile,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Load => "load",
            Phase::Drain => "drain",
            Phase::Reconcile => "reconcile",
        })
    }
}

/// What a progress line shows at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The phase, or the verdict once the scenario ended (`passed`, `FAILED`).
    pub what: String,
    /// Since the scenario started.
    pub elapsed: Duration,
    /// The load's counts (`None` before the load started).
    pub load: Option<LoadCounts>,
    /// Distinct tasks executed (`None` until the drain read the workers' logs).
    pub executed: Option<u64>,
}

impl Status {
    /// The bar's message: `load 12.3s | acked 412 | errors 3 | executed 390`.
    pub fn bar_message(&self) -> String {
        self.render(" ", " | ", " | ")
    }

    /// A log line's tail: `drain after 12.3s: acked 412, errors 3, executed 390`.
    pub fn log_message(&self) -> String {
        self.render(" after ", ": ", ", ")
    }

    /// The line a bar leaves behind: `passed in 41.0s | acked 412 | errors 3 | executed 412`.
    pub fn final_message(&self) -> String {
        self.render(" in ", " | ", " | ")
    }

    fn render(&self, before_time: &str, before_counts: &str, between: &str) -> String {
        let mut line = format!("{}{before_time}{}", self.what, format_elapsed(self.elapsed));
        if let Some(load) = self.load {
            let executed = self
                .executed
                .map_or_else(|| "-".to_owned(), |n| n.to_string());
            line.push_str(&format!(
                "{before_counts}acked {}{between}errors {}{between}executed {executed}",
                load.acknowledged,
                load.errors()
            ));
        }
        line
    }
}

/// `12.3s` under a minute, `5m07s` above.
pub fn format_elapsed(elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = elapsed.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// Whether bars are drawn (set once by `main`, see [`enable_bars`]).
static BARS: AtomicBool = AtomicBool::new(false);

/// The one set of bars on stderr; log lines are written while it is hidden.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Turns the live bars on when `wanted` and stderr is a terminal indicatif can draw on (not
/// `TERM=dumb`); returns whether they are on. Without it every scenario logs plain lines.
pub fn enable_bars(wanted: bool) -> bool {
    let on = wanted && io::stderr().is_terminal() && !bars().is_hidden();
    BARS.store(on, Ordering::Relaxed);
    on
}

fn bars_enabled() -> bool {
    BARS.load(Ordering::Relaxed)
}

/// The `tracing` subscriber's writer: stderr, with the bars hidden while a line is written so
/// that lines never cut through a bar (`tracing_subscriber::fmt().with_writer(LogWriter)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine
    }
}

/// One log line on its way to stderr (see [`LogWriter`]).
#[derive(Debug)]
pub struct LogLine;

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The subscriber writes each event with one `write_all`: one suspend per line.
        if bars_enabled() {
            bars().suspend(|| io::stderr().write_all(buf))?;
        } else {
            io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// What a scenario's bar and log lines read; shared with the bar's redraws.
#[derive(Debug)]
struct Shared {
    name: String,
    started: Instant,
    phase: Mutex<Phase>,
    load: OnceLock<Arc<LoadProgress>>,
    /// Distinct tasks executed; [`UNKNOWN`] until first read.
    executed: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl Shared {
    fn status(&self, what: String) -> Status {
        let executed = self.executed.load(Ordering::Relaxed);
        Status {
            what,
            elapsed: self.started.elapsed(),
            load: self.load.get().map(|load| load.snapshot()),
            executed: (executed != UNKNOWN).then_some(executed),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> Status {
        self.status(self.phase().to_string())
    }
}

/// The progress of one running scenario: a live bar on a terminal, else a log line per phase.
///
/// Dropping it without [`Self::finish`] removes the bar without a final line.
#[derive(Debug)]
pub struct ScenarioProgress {
    shared: Arc<Shared>,
    bar: Option<ProgressBar>,
}

impl ScenarioProgress {
    /// Starts the progress of scenario `name` in phase `starting`: a bar if [`enable_bars`]
    /// turned them on, else a log line.
    pub fn start(name: &str) -> Self {
        Self::new(name, bars_enabled())
    }

    fn new(name: &str, bar: bool) -> Self {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            started: Instant::now(),
            phase: Mutex::new(Phase::Starting),
            load: OnceLock::new(),
            executed: AtomicU64::new(UNKNOWN),
        });
        let bar = bar.then(|| {
            let for_redraws = Arc::clone(&shared);
            // The message is computed at each redraw from the shared counters: no task of our
            // own updates it, indicatif's ticker thread does.
            let style = ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {status}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .with_key(
                    "status",
                    move |_: &ProgressState, out: &mut dyn fmt::Write| {
                        let _ = out.write_str(&for_redraws.current().bar_message());
                    },
                );
            let bar = bars().add(
                ProgressBar::new_spinner()
                    .with_style(style)
                    .with_prefix(name.to_owned()),
            );
            bar.enable_steady_tick(TICK);
            bar
        });
        let progress = Self { shared, bar };
        progress.log_phase();
        progress
    }

    /// Moves to `phase`.
    pub fn phase(&self, phase: Phase) {
        let changed = {
            let mut current = self
                .shared
                .phase
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *current, phase) != phase
        };
        if changed {
            self.log_phase();
        }
    }

    /// Moves to `load` and returns the counters the load should update
    /// ([`crate::load::SubmitLoad::progress`]).
    pub fn start_load(&self) -> Arc<LoadProgress> {
        let load = Arc::clone(self.shared.load.get_or_init(Default::default));
        self.phase(Phase::Load);
        load
    }

    /// Notes the executions read so far (the distinct tasks among them are shown).
    pub fn executions(&self, executions: &[Execution]) {
        let distinct: HashSet<&str> = executions.iter().map(|e| e.task_id.as_str()).collect();
        self.shared
            .executed
            .store(distinct.len() as u64, Ordering::Relaxed);
    }

    /// Runs `work` with the bar off the screen, for work whose output bypasses `tracing` (the
    /// image or binary build runs cargo, which writes to the inherited stderr): a redraw in
    /// between would leave stale bar lines among that output.
    pub async fn hidden<T>(&self, work: impl Future<Output = T>) -> T {
        let Some(bar) = &self.bar else {
            return work.await;
        };
        bar.disable_steady_tick();
        bars().remove(bar);
        // `remove` leaves the last drawn line on the screen.
        let _ = bars().clear();
        let output = work.await;
        bars().add(bar.clone()).enable_steady_tick(TICK);
        output
    }

    /// Ends the progress with the verdict of `report`: the bar gives way to a final line.
    pub fn finish(mut self, report: &Report) {
        let verdict = if report.passed { "passed" } else { "FAILED" };
        let status = self.shared.status(verdict.to_owned());
        match self.bar.take() {
            Some(bar) => {
                remove(&bar);
                let mark = if report.passed { '✓' } else { '✗' };
                let line = format!("{mark} {} {}", self.shared.name, status.final_message());
                // Written with its newline, so what comes next starts on a line of its own
                // (`MultiProgress::println` leaves the cursor at the end of its line).
                bars().suspend(|| eprintln!("{line}"));
            }
            None => tracing::info!("{}: {}", self.shared.name, status.log_message()),
        }
    }

    /// On a terminal the bar shows the phase; elsewhere one line says it.
    fn log_phase(&self) {
        if self.bar.is_none() {
            let status = self.shared.current();
            tracing::info!("{}: phase {}", self.shared.name, status.log_message());
        }
    }
}

impl Drop for ScenarioProgress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            remove(&bar);
        }
    }
}

/// Stops `bar`'s ticker, erases it and takes it out of the set, so nothing is left to redraw
/// over what is printed after it.
fn remove(bar: &ProgressBar) {
    bar.finish_and_clear();
    bars().remove(bar);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn status(what: &str, load: Option<LoadCounts>, executed: Option<u64>) -> Status {
        Status {
            what: what.into(),
            elapsed: Duration::from_millis(12_340),
            load,
            executed,
        }
    }

    fn counts() -> LoadCounts {
        LoadCounts {
            attempted: 420,
            acknowledged: 412,
            failed: 1,
            indeterminate: 2,
        }
    }

    #[test]
    fn the_bar_message_shows_phase_elapsed_and_counts() {
        assert_eq!(
            status("load", Some(counts()), None).bar_message(),
            "load 12.3s | acked 412 | errors 3 | executed -"
        );
        assert_eq!(
            status("drain", Some(counts()), Some(390)).bar_message(),
            "drain 12.3s | acked 412 | errors 3 | executed 390"
        );
        assert_eq!(
            status("starting", None, None).bar_message(),
            "starting 12.3s"
        );
    }

    #[test]
    fn the_log_message_reads_as_a_sentence() {
        assert_eq!(
            status("drain", Some(counts()), Some(390)).log_message(),
            "drain after 12.3s: acked 412, errors 3, executed 390"
        );
        assert_eq!(
            status("starting", None, None).log_message(),
            "starting after 12.3s"
        );
    }

    #[test]
    fn the_final_line_gives_the_verdict_and_the_time_taken() {
        assert_eq!(
            status("passed", Some(counts()), Some(412)).final_message(),
            "passed in 12.3s | acked 412 | errors 3 | executed 412"
        );
    }

    #[test]
    fn elapsed_time_switches_to_minutes_past_one() {
        assert_eq!(format_elapsed(Duration::from_millis(950)), "0.9s");
        assert_eq!(format_elapsed(Duration::from_millis(59_940)), "59.9s");
        assert_eq!(format_elapsed(Duration::from_secs(307)), "5m07s");
    }

    /// Collects what a `tracing` subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(run: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_level(false)
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        text.lines().map(|l| l.trim().to_owned()).collect()
    }

    #[test]
    fn without_a_terminal_each_phase_is_one_plain_line_and_there_is_no_bar() {
        let lines = lines_of(|| {
            let progress = ScenarioProgress::new("mixed-workload", false);
            assert!(progress.bar.is_none());
            let load = progress.start_load();
            progress.phase(Phase::Load); // no change: no line
            progress.phase(Phase::Drain);
            progress.executions(&[]);
            progress.phase(Phase::Reconcile);
            drop(load);
            progress.finish(&Report {
                passed: true,
                ..Report::default()
            });
        });
        let shapes: Vec<String> = lines
            .iter()
            .map(|line| {
                // The elapsed times vary: keep the words around them.
                let (head, tail) = line.split_once(" after ").expect("an elapsed time");
                let tail = tail.split_once(": ").map_or("", |(_, counts)| counts);
                format!("{head} | {tail}")
            })
            .collect();
        assert_eq!(
            shapes,
            vec![
                "mixed-workload: phase starting | ",
                "mixed-workload: phase load | acked 0, errors 0, executed -",
                "mixed-workload: phase drain | acked 0, errors 0, executed -",
                "mixed-workload: phase reconcile | acked 0, errors 0, executed 0",
                "mixed-workload: passed | acked 0, errors 0, executed 0",
            ],
            "{lines:?}"
        );
    }
}
