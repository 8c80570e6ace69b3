//! The picture of a load run: every delivery's fan-out latency by send time, lost ones as
//! crosses, and for a ramp the start of each step marked with its rate.

use super::report::Report;
use crate::chart::{render_svg_with, ChartSpec, FaultMark, Sample, Style};

/// An SVG chart of the reports' windows (one for a run, one per ramp step).
pub fn latency_svg(title: &str, reports: &[Report]) -> String {
    let samples: Vec<Sample> = reports.iter().flat_map(|r| r.samples.iter().copied()).collect();
    let ms = |s: f64| (s.max(0.0) * 1000.0) as u64;
    let marks: Vec<FaultMark> = if reports.len() > 1 {
        reports
            .iter()
            .map(|r| FaultMark {
                at_ms: ms(r.window_start_s),
                label: format!("{:.2}/s", r.load.rate),
                recovered_ms: None,
            })
            .collect()
    } else {
        Vec::new()
    };
    let duration_ms = reports.last().map_or(0, |r| ms(r.window_end_s));
    render_svg_with(
        &ChartSpec {
            title,
            samples: &samples,
            faults: &marks,
            duration_ms,
        },
        &Style::FAN_OUT,
    )
}
