//! The pictures of a run: `r.html` beside `--report r.json`.
//!
//! Two timelines over the run, drawn with plotters as inline SVG (no script, nothing fetched):
//! the latency of every submit, coloured by its outcome (ok, fail, info), and the acknowledged
//! submits and executions per second. Each fault's interval is shaded and labelled on both, from
//! the fault step to the step that heals it, which is what a Jepsen user reads first.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;

use crate::history::{Event, OpOutcome};

/// A shaded interval: a fault from its step to its healing step (or the end of the run).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultInterval {
    /// Start, seconds since the load's first request.
    pub from_s: f64,
    /// End, seconds.
    pub to_s: f64,
    /// `action target`, e.g. `kill redis`.
    pub label: String,
}

/// Actions that end a fault on their target rather than start one.
const HEALING: &[&str] = &["start", "unpause", "connect", "heal"];
/// Actions that are over when they return (drawn as a thin band).
const INSTANT: &[&str] = &["restart", "scale", "clock-jump", "power-loss"];

fn subject(target: &Option<String>, between: &Option<[String; 2]>) -> String {
    match (target, between) {
        (Some(target), _) => target.clone(),
        (None, Some([a, b])) => format!("{a}↔{b}"),
        (None, None) => String::new(),
    }
}

/// The fault intervals of a history.
pub fn fault_intervals(events: &[Event]) -> Vec<FaultInterval> {
    let end_s = events.iter().filter_map(time_ms).fold(0.0_f64, f64::max) / 1000.0;
    let faults: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Fault(f) => Some(f),
            _ => None,
        })
        .collect();
    let mut intervals = Vec::new();
    for (i, fault) in faults.iter().enumerate() {
        let action = fault.action.as_str();
        if HEALING.contains(&action) {
            continue;
        }
        let what = subject(&fault.target, &fault.between);
        let fault_subject = fault.subject().ok();
        let from_s = fault.t_ms / 1000.0;
        let to_s = if INSTANT.contains(&action) {
            from_s + 0.25
        } else {
            faults[i + 1..]
                .iter()
                .find(|later| {
                    HEALING.contains(&later.action.as_str())
                        && later
                            .subject()
                            .is_ok_and(|s| fault_subject.is_some_and(|f| s.heals(&f)))
                })
                .map_or(end_s, |heal| heal.t_ms / 1000.0)
        };
        intervals.push(FaultInterval {
            from_s,
            to_s: to_s.max(from_s),
            label: format!("{action} {what}").trim().to_owned(),
        });
    }
    intervals
}

fn time_ms(event: &Event) -> Option<f64> {
    match event {
        Event::Submit(e) => Some(e.end_ms),
        Event::Cancel(e) => Some(e.end_ms),
        Event::Read(e) => Some(e.end_ms),
        Event::Execution(e) => Some(e.t_ms),
        Event::Fault(e) => Some(e.t_ms),
        Event::Exit(e) => Some(e.t_ms),
        Event::Final(_) | Event::Unknown => None,
    }
}

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 340;

fn shade<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    intervals: &[FaultInterval],
    y_top: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let band = RGBColor(214, 39, 40).mix(0.12);
    chart.draw_series(
        intervals
            .iter()
            .map(|i| Rectangle::new([(i.from_s, 0.0), (i.to_s, y_top)], band.filled())),
    )?;
    chart.draw_series(intervals.iter().enumerate().map(|(n, i)| {
        let row = 0.96 - 0.07 * (n % 4) as f64;
        Text::new(
            i.label.clone(),
            (i.from_s, y_top * row),
            ("sans-serif", 12).into_font().color(&RGBColor(150, 20, 20)),
        )
    }))?;
    Ok(())
}

/// The chart both timelines draw on.
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The chart frame the timelines share: caption, axes, fault bands, a legend; `draw` adds the
/// series, each with its legend entry.
fn timeline_svg(
    caption: &str,
    y_desc: &str,
    (x_max, y_max): (f64, f64),
    intervals: &[FaultInterval],
    draw: impl FnOnce(&mut Chart<'_, '_>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first request")
            .y_desc(y_desc)
            .draw()
            .map_err(plot_error)?;
        shade(&mut chart, intervals, y_max).map_err(plot_error)?;
        draw(&mut chart)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The latency timeline as an SVG document.
pub fn latency_svg(events: &[Event], intervals: &[FaultInterval]) -> anyhow::Result<String> {
    let points: Vec<(f64, f64, OpOutcome)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Submit(s) => Some((s.t_ms / 1000.0, (s.end_ms - s.t_ms).max(0.0), s.outcome)),
            _ => None,
        })
        .collect();
    let y_max = points.iter().map(|p| p.1).fold(1.0_f64, f64::max) * 1.1;
    let extent = (x_extent(events), y_max);
    timeline_svg(
        "Submit latency (every request)",
        "latency, ms",
        extent,
        intervals,
        |chart| {
            for (outcome, color, name) in [
                (OpOutcome::Ok, RGBColor(44, 160, 44), "ok"),
                (OpOutcome::Info, RGBColor(255, 127, 14), "info (unknown)"),
                (OpOutcome::Fail, RGBColor(214, 39, 40), "fail"),
            ] {
                chart
                    .draw_series(
                        points
                            .iter()
                            .filter(|p| p.2 == outcome)
                            .map(|p| Circle::new((p.0, p.1), 2, color.filled())),
                    )
                    .map_err(plot_error)?
                    .label(name)
                    .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
            }
            Ok(())
        },
    )
}

/// The throughput timeline (acknowledged submits and executions per second) as SVG.
pub fn throughput_svg(events: &[Event], intervals: &[FaultInterval]) -> anyhow::Result<String> {
    let mut acked: BTreeMap<i64, u64> = BTreeMap::new();
    let mut executed: BTreeMap<i64, u64> = BTreeMap::new();
    for event in events {
        match event {
            Event::Submit(s) if s.outcome == OpOutcome::Ok => {
                *acked.entry((s.end_ms / 1000.0).floor() as i64).or_default() += 1;
            }
            Event::Execution(e) => {
                *executed
                    .entry((e.t_ms / 1000.0).floor() as i64)
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    let x_max = x_extent(events);
    let seconds = 0..=(x_max.ceil() as i64);
    let series = |counts: &BTreeMap<i64, u64>| -> Vec<(f64, f64)> {
        seconds
            .clone()
            .map(|s| (s as f64 + 0.5, counts.get(&s).copied().unwrap_or(0) as f64))
            .collect()
    };
    let (acked, executed) = (series(&acked), series(&executed));
    let y_max = acked
        .iter()
        .chain(executed.iter())
        .map(|p| p.1)
        .fold(1.0_f64, f64::max)
        * 1.15;
    timeline_svg(
        "Throughput per second",
        "per second",
        (x_max, y_max),
        intervals,
        |chart| {
            for (points, color, name) in [
                (acked, RGBColor(31, 119, 180), "acknowledged submits"),
                (executed, RGBColor(148, 103, 189), "executions started"),
            ] {
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(plot_error)?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            }
            Ok(())
        },
    )
}

fn x_extent(events: &[Event]) -> f64 {
    (events.iter().filter_map(time_ms).fold(0.0_f64, f64::max) / 1000.0).max(1.0) * 1.02
}

fn plot_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {err:?}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The whole page: a title, the counts given as `(name, value)` rows, and both timelines.
pub fn render_html(
    title: &str,
    rows: &[(String, String)],
    events: &[Event],
) -> anyhow::Result<String> {
    let intervals = fault_intervals(events);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head><body>\n\
         <h1>{title}</h1>\n<table>\n",
        title = escape(title)
    );
    for (name, value) in rows {
        let _ = writeln!(
            html,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(name),
            escape(value)
        );
    }
    html.push_str("</table>\n<h2>Faults</h2>\n<ul>\n");
    for interval in &intervals {
        let _ = writeln!(
            html,
            "<li>{:.1} s – {:.1} s: {}</li>",
            interval.from_s,
            interval.to_s,
            escape(&interval.label)
        );
    }
    html.push_str("</ul>\n");
    html.push_str(&latency_svg(events, &intervals)?);
    html.push('\n');
    html.push_str(&throughput_svg(events, &intervals)?);
    html.push_str("\n</body></html>\n");
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Execution, Fault, Submit};
    use taskq::event::Outcome;

    fn fault(t_ms: f64, action: &str, target: &str) -> Event {
        Event::Fault(Fault {
            t_ms,
            action: action.into(),
            target: Some(target.into()),
            between: None,
            one_way: false,
            ok: true,
        })
    }

    fn history() -> Vec<Event> {
        let mut events = vec![
            fault(2000.0, "kill", "redis"),
            fault(4000.0, "start", "redis"),
        ];
        for i in 0..50 {
            let t = f64::from(i) * 100.0;
            events.push(Event::Submit(Submit {
                t_ms: t,
                end_ms: t + if (2000.0..4000.0).contains(&t) {
                    900.0
                } else {
                    3.0
                },
                outcome: if (2000.0..4000.0).contains(&t) {
                    OpOutcome::Info
                } else {
                    OpOutcome::Ok
                },
                status: None,
                id: Some(format!("t{i}")),
                key: None,
                priority: Some(5),
                delay_ms: None,
            }));
            events.push(Event::Execution(Execution {
                t_ms: t + 10.0,
                id: format!("t{i}"),
                attempt: 1,
                worker: "w".into(),
                outcome: Outcome::Succeeded,
                end_ms: None,
                service: None,
            }));
        }
        events
    }

    #[test]
    fn a_fault_lasts_until_the_step_that_heals_its_target() {
        let intervals = fault_intervals(&history());
        assert_eq!(
            intervals,
            vec![FaultInterval {
                from_s: 2.0,
                to_s: 4.0,
                label: "kill redis".into()
            }]
        );
    }

    #[test]
    fn the_page_has_both_timelines_and_the_fault_label_and_no_script() {
        let html =
            render_html("kill-redis", &[("lost".into(), "0".into())], &history()).expect("render");
        assert_eq!(html.matches("<svg").count(), 2, "two charts");
        assert!(html.contains("kill redis"), "the fault is labelled");
        assert!(!html.contains("<script"), "no script");
    }
}
