//! The latency-vs-rate curves of a bench run, as one SVG next to the Markdown report
//! (`docs/benchmarks.svg`): one panel per Redis persistence mode, POST /tasks latency (log scale)
//! against the request rate: p50 and p99 at each fixed rate (open model), and p99 at each wrk
//! run's maximum rate (closed model) for the orchestrator and for the bare server.

use plotters::prelude::*;

use crate::perf::report::Report;

/// What one panel draws: every point comes from one measurement of the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    /// `everysec`, `always`.
    pub title: String,
    /// (offered rate /s, p50 ms, p99 ms) per fixed-rate measurement.
    pub fixed: Vec<(f64, f64, f64)>,
    /// (rate /s, p99 ms) per wrk run against the orchestrator.
    pub orchestrator_max: Vec<(f64, f64)>,
    /// (rate /s, p99 ms) per wrk run against the bare server.
    pub bare_max: Vec<(f64, f64)>,
}

/// The panels of a report, one per persistence mode.
pub fn panels(report: &Report) -> Vec<Panel> {
    report
        .modes
        .iter()
        .map(|mode| Panel {
            title: format!("appendfsync {}", mode.fsync.as_str()),
            fixed: mode
                .fixed_rate
                .iter()
                .map(|m| (f64::from(m.http.rate_per_s), m.http.p50_ms, m.http.p99_ms))
                .collect(),
            orchestrator_max: mode
                .post
                .iter()
                .map(|m| (m.wrk.rate_per_s, m.wrk.p99_ms))
                .collect(),
            bare_max: mode
                .bare
                .iter()
                .map(|m| (m.wrk.rate_per_s, m.wrk.p99_ms))
                .collect(),
        })
        .collect()
}

/// Width of one panel, px.
pub const PANEL_WIDTH: u32 = 560;
/// Height of the picture, px.
pub const HEIGHT: u32 = 420;

fn plot_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the curves: {err:?}")
}

/// The SVG document: `panels` side by side under `caption`.
pub fn render_svg(caption: &str, panels: &[Panel]) -> anyhow::Result<String> {
    let mut svg = String::new();
    let width = PANEL_WIDTH * (panels.len().max(1) as u32);
    {
        let root = SVGBackend::with_string(&mut svg, (width, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let root = root
            .titled(caption, ("sans-serif", 15))
            .map_err(plot_error)?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            draw_panel(panel, area)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn draw_panel(
    panel: &Panel,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> anyhow::Result<()> {
    let rates = panel
        .fixed
        .iter()
        .map(|p| p.0)
        .chain(panel.orchestrator_max.iter().map(|p| p.0))
        .chain(panel.bare_max.iter().map(|p| p.0));
    let x_max = rates.fold(1.0_f64, f64::max) * 1.1;
    let latencies: Vec<f64> = panel
        .fixed
        .iter()
        .flat_map(|p| [p.1, p.2])
        .chain(panel.orchestrator_max.iter().map(|p| p.1))
        .chain(panel.bare_max.iter().map(|p| p.1))
        .filter(|ms| ms.is_finite() && *ms > 0.0)
        .collect();
    let y_min = latencies.iter().copied().fold(f64::INFINITY, f64::min);
    let y_max = latencies.iter().copied().fold(0.0_f64, f64::max);
    let (y_min, y_max) = if latencies.is_empty() {
        (0.1, 10.0)
    } else {
        (y_min / 1.5, y_max * 1.5)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("POST /tasks per second")
        .y_desc("latency, ms (log)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .y_labels(8)
        .light_line_style(WHITE)
        .draw()
        .map_err(plot_error)?;
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let green = RGBColor(44, 160, 44);
    let grey = RGBColor(120, 120, 120);
    let mut fixed = panel.fixed.clone();
    fixed.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (pick, color, name) in [
        (1usize, blue, "p50 at a fixed rate"),
        (2usize, orange, "p99 at a fixed rate"),
    ] {
        let points: Vec<(f64, f64)> = fixed
            .iter()
            .map(|p| (p.0, if pick == 1 { p.1 } else { p.2 }))
            .filter(|p| p.1 > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(plot_error)?;
    }
    for (points, color, name) in [
        (&panel.orchestrator_max, green, "p99 at the max rate (wrk)"),
        (&panel.bare_max, grey, "bare server: p99 at its max rate"),
    ] {
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.1 > 0.0)
                    .map(|p| TriangleMarker::new(*p, 7, color.filled())),
            )
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// The caption of a report's picture: what was measured, where and when.
pub fn caption(report: &Report) -> String {
    format!(
        "POST /tasks latency against rate — {} × {} cores, code {}, {}",
        report.machine.cpu,
        report.machine.cores,
        report.versions.git,
        report
            .generated_at
            .get(..10)
            .unwrap_or(&report.generated_at)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(cx, cy)` of every `<circle>` in `svg`, in document order.
    fn circles(svg: &str) -> Vec<(f64, f64)> {
        svg.split("<circle")
            .skip(1)
            .map(|rest| {
                let attr = |name: &str| -> f64 {
                    let start = rest.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
                    let end = rest[start..].find('"').expect("closing quote") + start;
                    rest[start..end].parse().expect("a number")
                };
                (attr("cx"), attr("cy"))
            })
            .collect()
    }

    #[test]
    fn every_fixed_rate_point_is_drawn_where_its_rate_and_latency_put_it() {
        let panel = Panel {
            title: "appendfsync everysec".into(),
            fixed: vec![(5000.0, 2.0, 15.0), (1000.0, 0.5, 1.5)],
            orchestrator_max: vec![(19000.0, 8.0)],
            bare_max: vec![(25000.0, 5.0)],
        };
        let svg = render_svg("test", &[panel]).expect("renders");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let points = circles(&svg);
        // p50 line then p99 line, each sorted by rate: (1000, 0.5), (5000, 2), (1000, 1.5),
        // (5000, 15)
        assert_eq!(points.len(), 4, "{points:?}");
        let (p50_low, p50_high, p99_low, p99_high) = (points[0], points[1], points[2], points[3]);
        assert!(p50_high.0 > p50_low.0, "a higher rate is further right");
        assert!((p50_low.0 - p99_low.0).abs() < 0.5, "same rate, same x");
        assert!(p99_low.1 < p50_low.1, "a higher latency is higher up");
        assert!(p99_high.1 < p50_high.1 && p99_high.1 < p99_low.1);
        // log scale: 0.5 → 1.5 ms (×3) and 2 → 15 ms (×7.5) keep their ratio of heights
        let (a, b) = (p50_low.1 - p99_low.1, p50_high.1 - p99_high.1);
        let expected = 7.5_f64.ln() / 3.0_f64.ln();
        assert!((b / a - expected).abs() < 0.06, "{a} {b}");
        assert!(
            svg.contains("bare server"),
            "the legend names the reference"
        );
    }

    #[test]
    fn empty_and_missing_measurements_still_render() {
        for panels in [
            vec![],
            vec![Panel::default()],
            vec![Panel {
                fixed: vec![(1000.0, 0.0, f64::NAN)],
                ..Panel::default()
            }],
        ] {
            let svg = render_svg("nothing measured", &panels).expect("renders");
            assert!(svg.contains("</svg>"));
        }
    }
}
