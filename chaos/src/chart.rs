//! A picture of a chaos run: edit latency over time, with the injected faults marked and
//! their recovery times annotated, as a standalone SVG document (no dependencies).
//! [`render_svg_with`] and a [`Style`] draw other latencies the same way (a load run's
//! fan-out deliveries, with its rate steps as marks).
//!
//! - x axis: seconds since the run started, `0..duration`.
//! - y axis: acknowledgement latency in ms on a log scale, from 1 ms (the style's floor) to
//!   `max(1000, p100)`.
//! - Edits never acknowledged are red crosses in a band above the plot's data area.
//! - Each fault is a dashed orange line labelled at the top; a measured recovery is a shaded
//!   band from the fault to the moment every affected editor was editing again.
//!
//! The input is taken as it comes: latencies that are NaN or infinite are skipped, negative
//! ones count as 0 ms, and latencies under the floor are drawn on it. Above
//! [`MAX_POINTS`] acknowledged samples the dots are thinned deterministically (the slowest edit
//! of each run of consecutive edits is kept, so spikes stay visible); percentiles always use
//! every sample.

use std::fmt::Write;

use crate::bench::stats::percentile;

/// One measured edit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was sent, ms since the run started.
    pub at_ms: u64,
    /// How long until it was acknowledged, in ms; `None` if it was never acknowledged by the
    /// end of the fault window it fell in (drawn as a red cross at the top).
    pub latency_ms: Option<f64>,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultMark {
    /// When it was injected, ms since the run started.
    pub at_ms: u64,
    /// Short description, such as `"kill node 2"` or `"restart redis"`.
    pub label: String,
    /// How long until every affected editor was editing again; `None` when not measured or
    /// never recovered.
    pub recovered_ms: Option<u64>,
}

/// Everything drawn in one chart.
#[derive(Debug, Clone, Copy)]
pub struct ChartSpec<'a> {
    pub title: &'a str,
    pub samples: &'a [Sample],
    pub faults: &'a [FaultMark],
    /// Length of the run in ms (the x axis is extended if a sample or fault lies beyond it,
    /// and falls back to the data's extent when 0).
    pub duration_ms: u64,
}

/// The words of a chart and the bottom of its latency axis: acknowledgements rarely take
/// under a millisecond, fan-out deliveries usually do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    /// Bottom of the latency axis in ms (a power of ten at most 1).
    pub floor_ms: f64,
    /// Legend of a dot.
    pub dot: &'static str,
    /// Plural of what a dot is, for "slowest of every N …".
    pub dots: &'static str,
    /// Legend of a sample without latency, and its band's label on the axis.
    pub missing: &'static str,
    pub missing_axis: &'static str,
    /// Legend of a mark (drawn only when there are marks).
    pub mark: &'static str,
    /// Legend of the shaded band after a mark (drawn only when a mark has one).
    pub band: &'static str,
    /// Stats line: what the count counts, and the text when nothing has a latency.
    pub counted: &'static str,
    pub none: &'static str,
}

impl Style {
    /// A chaos run: time to durable ack, faults and recoveries.
    pub const ACKS: Style = Style {
        floor_ms: 1.0,
        dot: "acknowledged edit",
        dots: "edits",
        missing: "never acknowledged",
        missing_axis: "no ack",
        mark: "fault",
        band: "until every affected editor edits again",
        counted: "acked",
        none: "no acknowledged edits",
    };

    /// A load run: time from an edit's send to its arrival at another editor.
    pub const FAN_OUT: Style = Style {
        floor_ms: 0.1,
        dot: "delivery",
        dots: "deliveries",
        missing: "never delivered",
        missing_axis: "lost",
        mark: "rate step (edits/s per editor)",
        band: "",
        counted: "deliveries",
        none: "no deliveries",
    };
}

/// Most dots drawn; above this many acknowledged samples they are thinned by stride.
pub const MAX_POINTS: usize = 20_000;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;
/// Plot area: left, right, top, bottom.
const PL: f64 = 70.0;
const PR: f64 = 980.0;
const PT: f64 = 78.0;
const PB: f64 = 368.0;
/// Height of the band at the top of the plot that holds the unacknowledged crosses.
const NO_ACK_BAND: f64 = 16.0;
/// Top of the latency data area.
const DT: f64 = PT + NO_ACK_BAND;

const BLUE: &str = "#1f77b4";
const RED: &str = "#d62728";
const ORANGE: &str = "#ff7f0e";
const GREEN: &str = "#2ca02c";

const LABEL_FONT: f64 = 10.0;
/// Rough advance of one character at [`LABEL_FONT`], for laying labels out.
const CHAR_W: f64 = 5.8;
const MAX_LABEL_CHARS: usize = 40;

/// Renders the chart of a chaos run as an SVG document (1000 x 420 px).
pub fn render_svg(spec: &ChartSpec) -> String {
    render_svg_with(spec, &Style::ACKS)
}

/// Renders the chart in the given style.
pub fn render_svg_with(spec: &ChartSpec, style: &Style) -> String {
    let data = Data::new(spec, style.floor_ms);
    let mut s = String::with_capacity(64 * 1024 + 48 * data.dots.len());
    // Writing to a String cannot fail.
    let _ = write_svg(&mut s, spec, style, &data);
    s
}

/// The samples, cleaned up and reduced to what is drawn.
struct Data {
    /// Acknowledged samples to draw: (at_ms, latency_ms >= 0).
    dots: Vec<(u64, f64)>,
    /// Stride used to thin the dots (1: every sample drawn).
    stride: usize,
    /// Send times of unacknowledged samples.
    unacked: Vec<u64>,
    acked_count: usize,
    p50: Option<f64>,
    p99: Option<f64>,
    /// Largest acknowledged latency, if any.
    p100: Option<f64>,
    /// Total ms covered by the x axis (>= 1).
    x_max_ms: f64,
    /// Top of the latency axis in ms (>= 1000).
    y_max_ms: f64,
    /// Bottom of the latency axis in ms (a power of ten, at most 1).
    floor_ms: f64,
}

impl Data {
    fn new(spec: &ChartSpec, floor_ms: f64) -> Data {
        let mut acked: Vec<(u64, f64)> = Vec::new();
        let mut unacked = Vec::new();
        for s in spec.samples {
            match s.latency_ms {
                Some(l) if l.is_finite() => acked.push((s.at_ms, l.max(0.0))),
                Some(_) => {}
                None => unacked.push(s.at_ms),
            }
        }

        let mut sorted: Vec<f64> = acked.iter().map(|&(_, l)| l).collect();
        sorted.sort_by(f64::total_cmp);
        let p50 = percentile(&sorted, 50.0);
        let p99 = percentile(&sorted, 99.0);
        let p100 = sorted.last().copied();

        let data_end = spec
            .samples
            .iter()
            .map(|s| s.at_ms)
            .chain(spec.faults.iter().map(|f| f.at_ms))
            .max()
            .unwrap_or(0);
        let x_max_ms = spec.duration_ms.max(data_end).max(1) as f64;
        let y_max_ms = p100.unwrap_or(0.0).max(1000.0);

        let acked_count = acked.len();
        let (dots, stride) = downsample(acked, MAX_POINTS);
        Data {
            dots,
            stride,
            unacked,
            acked_count,
            p50,
            p99,
            p100,
            x_max_ms,
            y_max_ms,
            floor_ms: if floor_ms.is_finite() && floor_ms > 0.0 {
                10f64.powf(floor_ms.log10().floor().clamp(-6.0, 0.0))
            } else {
                1.0
            },
        }
    }

    fn x(&self, ms: f64) -> f64 {
        PL + (ms / self.x_max_ms).clamp(0.0, 1.0) * (PR - PL)
    }

    fn y(&self, latency_ms: f64) -> f64 {
        let (lo, hi) = (self.floor_ms.log10(), self.y_max_ms.log10());
        let v = latency_ms.clamp(self.floor_ms, self.y_max_ms);
        PB - (v.log10() - lo) / (hi - lo) * (PB - DT)
    }
}

/// At most `cap` points: when there are more, the points are ordered by time, cut into runs
/// of `stride` consecutive points and the slowest of each run kept. Returns the stride.
fn downsample(mut points: Vec<(u64, f64)>, cap: usize) -> (Vec<(u64, f64)>, usize) {
    let cap = cap.max(1);
    if points.len() <= cap {
        return (points, 1);
    }
    points.sort_by_key(|&(at, _)| at);
    let stride = points.len().div_ceil(cap);
    let kept = points
        .chunks(stride)
        .filter_map(|run| run.iter().copied().reduce(|a, b| if b.1 > a.1 { b } else { a }))
        .collect();
    (kept, stride)
}

/// `s` with the XML special characters escaped and characters XML cannot hold dropped.
pub fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// `s` cut to `max` characters (with an ellipsis), then escaped.
fn text(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        escape_xml(&format!("{cut}…"))
    } else {
        escape_xml(s)
    }
}

/// A latency for people: "0.42 ms", "12.3 ms", "250 ms".
fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `target` intervals.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Rows for labels spanning `(start, end)` in x, in the order given: each label takes the
/// first row where it does not overlap the previous label; a label with no free row is
/// left out (`None`) rather than drawn over another (its line keeps a tooltip).
fn assign_rows(spans: &[(f64, f64)], rows: usize) -> Vec<Option<usize>> {
    let rows = rows.max(1);
    let mut ends = vec![f64::NEG_INFINITY; rows];
    spans
        .iter()
        .map(|&(start, end)| {
            let row = ends.iter().position(|&e| e + 4.0 <= start)?;
            ends[row] = ends[row].max(end);
            Some(row)
        })
        .collect()
}

/// A label placed next to an x position.
struct Placed {
    /// Escaped text.
    text: String,
    /// The text's anchor x.
    x: f64,
    /// Anchored at its end (drawn to the left of the position).
    end: bool,
    /// The x range it covers.
    span: (f64, f64),
}

impl Placed {
    /// Right of `x`, or left of it when that would cross `right_edge`; the text is
    /// `chars` characters long.
    fn new(text: String, chars: usize, x: f64, right_edge: f64) -> Placed {
        let width = chars as f64 * CHAR_W;
        if x + 3.0 + width <= right_edge || x - 3.0 - width < 0.0 {
            Placed {
                text,
                x: x + 3.0,
                end: false,
                span: (x + 3.0, x + 3.0 + width),
            }
        } else {
            Placed {
                text,
                x: x - 3.0,
                end: true,
                span: (x - 3.0 - width, x - 3.0),
            }
        }
    }

    fn anchor(&self) -> &'static str {
        if self.end {
            r#" text-anchor="end""#
        } else {
            ""
        }
    }
}

fn write_svg(s: &mut String, spec: &ChartSpec, style: &Style, d: &Data) -> std::fmt::Result {
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    )?;
    writeln!(
        s,
        r#"<defs><clipPath id="plot-area"><rect x="{PL}" y="{PT}" width="{}" height="{}"/></clipPath></defs>"#,
        PR - PL,
        PB - PT
    )?;
    writeln!(s, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#)?;

    // Title, and the percentiles in the top right corner.
    let title = text(spec.title, 80);
    let stats = match (d.p50, d.p99) {
        (Some(p50), Some(p99)) => format!(
            "p50 {} · p99 {} · max {} · {} {}",
            fmt_ms(p50),
            fmt_ms(p99),
            fmt_ms(d.p100.unwrap_or(p99)),
            d.acked_count,
            style.counted
        ),
        _ => style.none.to_string(),
    };
    let stats = if d.unacked.is_empty() {
        stats
    } else {
        format!("{stats} · {} {}", d.unacked.len(), style.missing)
    };
    // A long title and long percentiles share the top line: smaller type when they would
    // overlap (rough widths of bold 16 px, 13 px and regular 12 px sans-serif characters).
    let (title_len, stats_len) = (title.chars().count() as f64, stats.chars().count() as f64);
    let fits = |title_px: f64, stats_px: f64| PL + title_len * title_px + 16.0 <= PR - stats_len * stats_px;
    let (title_size, stats_size) = if fits(9.0, 6.7) {
        (16, 12)
    } else if fits(7.4, 6.7) {
        (13, 12)
    } else {
        (13, 10)
    };
    writeln!(
        s,
        r#"<text x="{PL}" y="24" font-size="{title_size}" font-weight="bold">{title}</text>"#
    )?;
    writeln!(s, r#"<g id="stats" text-anchor="end">"#)?;
    writeln!(
        s,
        r#"<text x="{PR}" y="24" font-size="{stats_size}">{}</text>"#,
        escape_xml(&stats)
    )?;
    if d.stride > 1 {
        writeln!(
            s,
            r##"<text x="{PR}" y="46" font-size="10" fill="#555">dots: slowest of every {} {}</text>"##,
            d.stride,
            escape_xml(style.dots)
        )?;
    }
    writeln!(s, "</g>")?;

    write_legend(s, spec, style)?;
    write_axes(s, style, d)?;

    // Recovery bands (under the samples).
    writeln!(
        s,
        r#"<g id="recovery" clip-path="url(#plot-area)" fill="{GREEN}" fill-opacity="0.12">"#
    )?;
    for f in spec.faults {
        if let Some(rec) = f.recovered_ms {
            let x0 = d.x(f.at_ms as f64);
            let x1 = d.x(f.at_ms.saturating_add(rec) as f64);
            writeln!(
                s,
                r#"<rect x="{x0:.1}" y="{PT}" width="{:.1}" height="{}"/>"#,
                (x1 - x0).max(1.0),
                PB - PT
            )?;
        }
    }
    writeln!(s, "</g>")?;

    // Acknowledged samples.
    writeln!(s, r#"<g id="samples" fill="{BLUE}" fill-opacity="0.45">"#)?;
    for &(at, l) in &d.dots {
        writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5"/>"#,
            d.x(at as f64),
            d.y(l)
        )?;
    }
    writeln!(s, "</g>")?;

    // Unacknowledged samples: one cross per pixel column.
    let mut columns: Vec<i64> = d
        .unacked
        .iter()
        .map(|&at| d.x(at as f64).round() as i64)
        .collect();
    columns.sort_unstable();
    columns.dedup();
    writeln!(
        s,
        r#"<g id="unacked" stroke="{RED}" stroke-width="1.2" fill="none">"#
    )?;
    if !columns.is_empty() {
        let y = PT + NO_ACK_BAND / 2.0;
        let mut path = String::with_capacity(columns.len() * 40);
        for x in columns {
            write!(path, "M{} {}l6 6M{} {}l6 -6", x - 3, y - 3.0, x - 3, y + 3.0)?;
        }
        writeln!(s, r#"<path d="{path}"/>"#)?;
    }
    writeln!(s, "</g>")?;

    write_faults(s, spec, d)?;
    writeln!(s, "</svg>")
}

fn write_legend(s: &mut String, spec: &ChartSpec, style: &Style) -> std::fmt::Result {
    let y = 46.0;
    // Rough width of a legend entry: the symbol, its text, a gap.
    let advance = |text: &str| 32.0 + text.chars().count() as f64 * 6.2;
    writeln!(s, r#"<g id="legend" font-size="11">"#)?;
    let mut x = PL;
    writeln!(
        s,
        r#"<circle cx="{}" cy="{}" r="3" fill="{BLUE}" fill-opacity="0.6"/>"#,
        x + 4.0,
        y - 4.0
    )?;
    writeln!(
        s,
        r#"<text x="{}" y="{y}">{}</text>"#,
        x + 12.0,
        escape_xml(style.dot)
    )?;
    x += advance(style.dot);
    writeln!(
        s,
        r#"<path d="M{} {}l6 6M{} {}l6 -6" stroke="{RED}" stroke-width="1.2"/>"#,
        x + 1.0,
        y - 7.0,
        x + 1.0,
        y - 1.0
    )?;
    writeln!(
        s,
        r#"<text x="{}" y="{y}">{}</text>"#,
        x + 12.0,
        escape_xml(style.missing)
    )?;
    x += advance(style.missing);
    if !spec.faults.is_empty() && !style.mark.is_empty() {
        writeln!(
            s,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{ORANGE}" stroke-width="1.5" stroke-dasharray="4 3"/>"#,
            x + 4.0,
            y - 11.0,
            x + 4.0,
            y + 2.0
        )?;
        writeln!(
            s,
            r#"<text x="{}" y="{y}">{}</text>"#,
            x + 12.0,
            escape_xml(style.mark)
        )?;
        x += advance(style.mark);
    }
    if spec.faults.iter().any(|f| f.recovered_ms.is_some()) && !style.band.is_empty() {
        writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{GREEN}" fill-opacity="0.25"/>"#,
            y - 9.0
        )?;
        writeln!(
            s,
            r#"<text x="{}" y="{y}">{}</text>"#,
            x + 14.0,
            escape_xml(style.band)
        )?;
    }
    writeln!(s, "</g>")
}

fn write_axes(s: &mut String, style: &Style, d: &Data) -> std::fmt::Result {
    writeln!(s, r##"<g id="axes" stroke="#999" fill="none">"##)?;
    writeln!(s, r#"<path d="M{PL} {PT}V{PB}H{PR}"/>"#)?;
    writeln!(s, "</g>")?;

    // The band of unacknowledged edits.
    writeln!(
        s,
        r#"<rect x="{PL}" y="{PT}" width="{}" height="{NO_ACK_BAND}" fill="{RED}" fill-opacity="0.05"/>"#,
        PR - PL
    )?;

    // x: seconds.
    let span_s = d.x_max_ms / 1000.0;
    let step = nice_step(span_s, 10.0);
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil().clamp(0.0, 9.0) as usize
    };
    writeln!(
        s,
        r##"<g id="x-ticks" font-size="10" text-anchor="middle" fill="#333">"##
    )?;
    let ticks = (span_s / step).floor().clamp(0.0, 1000.0) as u64;
    for i in 0..=ticks {
        let t = i as f64 * step;
        let x = d.x(t * 1000.0);
        writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{PB}" x2="{x:.1}" y2="{}" stroke="#999"/><line x1="{x:.1}" y1="{DT}" x2="{x:.1}" y2="{PB}" stroke="#eee"/>"##,
            PB + 4.0
        )?;
        writeln!(s, r#"<text x="{x:.1}" y="{}">{t:.decimals$}</text>"#, PB + 16.0)?;
    }
    writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="11">time (s)</text>"#,
        (PL + PR) / 2.0,
        PB + 36.0
    )?;
    writeln!(s, "</g>")?;

    // y: decades of ms.
    let lowest = d.floor_ms.log10().round() as i32;
    let decades = d.y_max_ms.log10().floor().clamp(0.0, 400.0) as i32;
    let every = ((decades - lowest) / 12 + 1).max(1);
    writeln!(
        s,
        r##"<g id="y-ticks" font-size="10" text-anchor="end" fill="#333">"##
    )?;
    for k in lowest..=decades {
        let v = 10f64.powi(k);
        let y = d.y(v);
        writeln!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{PL}" y2="{y:.1}" stroke="#999"/><line x1="{PL}" y1="{y:.1}" x2="{PR}" y2="{y:.1}" stroke="#eee"/>"##,
            PL - 4.0
        )?;
        if (k - lowest) % every == 0 {
            let label = if k < 0 {
                format!("{v:.prec$}", prec = k.unsigned_abs() as usize)
            } else if k < 7 {
                format!("{v:.0}")
            } else {
                format!("1e{k}")
            };
            writeln!(s, r#"<text x="{}" y="{:.1}">{label}</text>"#, PL - 7.0, y + 3.5)?;
        }
    }
    writeln!(
        s,
        r#"<text x="{}" y="{}" fill="{RED}">{}</text>"#,
        PL - 7.0,
        PT + NO_ACK_BAND / 2.0 + 3.5,
        escape_xml(style.missing_axis)
    )?;
    let mid = (DT + PB) / 2.0;
    writeln!(
        s,
        r#"<text x="18" y="{mid}" font-size="11" text-anchor="middle" transform="rotate(-90 18 {mid})">latency (ms, log scale)</text>"#
    )?;
    writeln!(s, "</g>")
}

fn write_faults(s: &mut String, spec: &ChartSpec, d: &Data) -> std::fmt::Result {
    let mut order: Vec<&FaultMark> = spec.faults.iter().collect();
    order.sort_by_key(|f| f.at_ms);

    // Labels above the plot, in two rows.
    let labels: Vec<Placed> = order
        .iter()
        .map(|f| {
            let chars = f.label.chars().count().min(MAX_LABEL_CHARS);
            Placed::new(
                text(&f.label, MAX_LABEL_CHARS),
                chars,
                d.x(f.at_ms as f64),
                WIDTH - 4.0,
            )
        })
        .collect();
    let label_rows = assign_rows(&labels.iter().map(|l| l.span).collect::<Vec<_>>(), 2);

    // Recovery notes along the bottom of the plot, in three rows.
    let notes: Vec<Option<Placed>> = order
        .iter()
        .map(|f| {
            f.recovered_ms.map(|rec| {
                let note = format!("recovered in {:.2} s", rec as f64 / 1000.0);
                let chars = note.chars().count();
                Placed::new(note, chars, d.x(f.at_ms as f64), PR)
            })
        })
        .collect();
    let note_spans: Vec<(f64, f64)> = notes.iter().flatten().map(|n| n.span).collect();
    let mut note_rows = assign_rows(&note_spans, 3).into_iter();

    writeln!(s, r#"<g id="faults" font-size="{LABEL_FONT}">"#)?;
    for ((f, label), (row, note)) in order.iter().zip(labels).zip(label_rows.into_iter().zip(notes)) {
        let x = d.x(f.at_ms as f64);
        writeln!(s, "<g>")?;
        writeln!(
            s,
            r#"<title>{} at {:.2} s</title><line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{PB}" stroke="{ORANGE}" stroke-width="1.5" stroke-dasharray="5 4"/>"#,
            label.text,
            f.at_ms as f64 / 1000.0,
            PT - 14.0 - 11.0 * row.unwrap_or(0) as f64
        )?;
        if let Some(row) = row {
            writeln!(
                s,
                r##"<text x="{:.1}" y="{}" fill="#a04000"{}>{}</text>"##,
                label.x,
                PT - 6.0 - 11.0 * row as f64,
                label.anchor(),
                label.text
            )?;
        }
        if let Some(note) = note {
            let Some(nrow) = note_rows.next().flatten() else {
                writeln!(s, "</g>")?;
                continue;
            };
            writeln!(
                s,
                r##"<text x="{:.1}" y="{}" fill="#1a661a" stroke="white" stroke-width="3" paint-order="stroke"{}>{}</text>"##,
                note.x,
                PB - 6.0 - 12.0 * nrow as f64,
                note.anchor(),
                note.text
            )?;
        }
        writeln!(s, "</g>")?;
    }
    writeln!(s, "</g>")
}

/// Writes an example chart to `path` (used to look at the rendering).
#[cfg(test)]
fn write_example(path: &str) -> std::io::Result<()> {
    let mut samples = Vec::new();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let faults = vec![
        FaultMark {
            at_ms: 20_000,
            label: "kill node 2".into(),
            recovered_ms: Some(2_350),
        },
        FaultMark {
            at_ms: 45_000,
            label: "kill leader".into(),
            recovered_ms: Some(4_120),
        },
        FaultMark {
            at_ms: 46_000,
            label: "pause node 3".into(),
            recovered_ms: None,
        },
        FaultMark {
            at_ms: 70_000,
            label: "add node 4".into(),
            recovered_ms: Some(310),
        },
        FaultMark {
            at_ms: 95_000,
            label: "restart redis".into(),
            recovered_ms: Some(7_800),
        },
    ];
    for at in (0..120_000u64).step_by(4) {
        let in_outage = faults.iter().any(|f| {
            let end = f.at_ms + f.recovered_ms.unwrap_or(1_000);
            at >= f.at_ms && at < end
        });
        let base = 4.0 + 20.0 * rnd() * rnd();
        let latency = if in_outage {
            if rnd() < 0.05 {
                None
            } else {
                Some(base + 3000.0 * rnd())
            }
        } else if rnd() < 0.001 {
            Some(base * 40.0)
        } else {
            Some(base)
        };
        samples.push(Sample {
            at_ms: at,
            latency_ms: latency,
        });
    }
    let spec = ChartSpec {
        title: "chaos run <example> — 6 nodes, 300 editors",
        samples: &samples,
        faults: &faults,
        duration_ms: 120_000,
    };
    std::fs::write(path, render_svg(&spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        let opens = svg.matches("<g ").count() + svg.matches("<g>").count();
        assert_eq!(opens, svg.matches("</g>").count());
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(
            !svg.contains("NaN") && !svg.contains("inf"),
            "non-finite number in output"
        );
    }

    fn circles(svg: &str) -> usize {
        svg.matches("<circle").count()
    }

    #[test]
    fn empty_inputs_are_valid() {
        for duration_ms in [0, 1, 60_000, u64::MAX] {
            let svg = render_svg(&ChartSpec {
                title: "",
                samples: &[],
                faults: &[],
                duration_ms,
            });
            well_formed(&svg);
            assert!(svg.contains("no acknowledged edits"));
            // Only the legend's dot.
            assert_eq!(circles(&svg), 1);
        }
    }

    #[test]
    fn labels_are_escaped() {
        let faults = [FaultMark {
            at_ms: 10,
            label: r#"<kill & "x">"#.into(),
            recovered_ms: None,
        }];
        let svg = render_svg(&ChartSpec {
            title: "it's <a> & b",
            samples: &[],
            faults: &faults,
            duration_ms: 100,
        });
        well_formed(&svg);
        assert!(svg.contains("&lt;kill &amp; &quot;x&quot;&gt;"));
        assert!(svg.contains("it&apos;s &lt;a&gt; &amp; b"));
        assert!(!svg.contains("<kill"));
        assert_eq!(escape_xml("a\u{0}b\nc"), "ab c");
    }

    #[test]
    fn crowded_fault_labels_are_left_out_not_piled_up() {
        let faults: Vec<FaultMark> = (0..100)
            .map(|i| FaultMark {
                at_ms: i * 100,
                label: format!("kill node {i}"),
                recovered_ms: Some(900),
            })
            .collect();
        let svg = render_svg(&ChartSpec {
            title: "crowded",
            samples: &[],
            faults: &faults,
            duration_ms: 10_000,
        });
        well_formed(&svg);
        let drawn = svg.matches(">kill node ").count();
        // Every fault keeps its line and tooltip; only a few labels fit.
        assert_eq!(svg.matches("<title>kill node ").count(), 100);
        assert!(drawn - 100 < 30, "{} labels drawn", drawn - 100);
    }

    #[test]
    fn a_long_title_and_long_percentiles_do_not_overlap() {
        let samples: Vec<Sample> = (0..2_000)
            .map(|i| Sample {
                at_ms: i * 20,
                latency_ms: Some(1.0 + (i % 97) as f64 * 20.0),
            })
            .chain((0..20).map(|i| Sample {
                at_ms: 30_000 + i,
                latency_ms: None,
            }))
            .collect();
        let short = render_svg(&ChartSpec {
            title: "smoke (seed 1): edit latency to durable ack",
            samples: &samples,
            faults: &[],
            duration_ms: 45_000,
        });
        assert!(short.contains(r#"font-size="16" font-weight="bold""#));
        let long = render_svg(&ChartSpec {
            title: "full-node-failover (seed 11): edit latency to durable ack",
            samples: &samples,
            faults: &[],
            duration_ms: 45_000,
        });
        well_formed(&long);
        assert!(
            long.contains(r#"font-size="13" font-weight="bold""#),
            "the title was not made smaller"
        );
        if let Ok(path) = std::env::var("TROUPE_CHART_SAMPLE") {
            let _ = std::fs::write(path, &long);
        }
    }

    #[test]
    fn recovery_is_annotated() {
        let faults = [
            FaultMark {
                at_ms: 5_000,
                label: "kill leader".into(),
                recovered_ms: Some(1_234),
            },
            FaultMark {
                at_ms: 8_000,
                label: "add node 4".into(),
                recovered_ms: None,
            },
        ];
        let svg = render_svg(&ChartSpec {
            title: "t",
            samples: &[],
            faults: &faults,
            duration_ms: 10_000,
        });
        well_formed(&svg);
        assert!(svg.contains("recovered in 1.23 s"));
        assert_eq!(svg.matches("recovered in").count(), 1);
        assert!(svg.contains("kill leader") && svg.contains("add node 4"));
    }

    #[test]
    fn downsampling_caps_circles_and_keeps_spikes() {
        let n = 3 * MAX_POINTS + 17;
        let samples: Vec<Sample> = (0..n as u64)
            .map(|i| Sample {
                at_ms: i,
                latency_ms: Some(if i == 12_345 { 9_000.0 } else { 5.0 }),
            })
            .collect();
        let spec = ChartSpec {
            title: "big",
            samples: &samples,
            faults: &[],
            duration_ms: n as u64,
        };
        let svg = render_svg(&spec);
        well_formed(&svg);
        let drawn = circles(&svg) - 1;
        assert!(drawn <= MAX_POINTS && drawn > MAX_POINTS / 2, "{drawn}");
        // The spike sets the axis and is one of the dots kept.
        let d = Data::new(&spec, 1.0);
        assert_eq!(d.y_max_ms, 9_000.0);
        assert!(d.dots.iter().any(|&(_, l)| l == 9_000.0));
        assert_eq!(render_svg(&spec), svg, "deterministic");
    }

    #[test]
    fn bad_values_do_not_panic() {
        let samples = [
            Sample {
                at_ms: 0,
                latency_ms: Some(f64::NAN),
            },
            Sample {
                at_ms: 1,
                latency_ms: Some(-5.0),
            },
            Sample {
                at_ms: 2,
                latency_ms: Some(f64::INFINITY),
            },
            Sample {
                at_ms: 3,
                latency_ms: Some(0.2),
            },
            Sample {
                at_ms: u64::MAX,
                latency_ms: Some(1e300),
            },
            Sample {
                at_ms: 7,
                latency_ms: None,
            },
        ];
        let faults = [FaultMark {
            at_ms: u64::MAX,
            label: "x".repeat(500),
            recovered_ms: Some(u64::MAX),
        }];
        let spec = ChartSpec {
            title: "bad",
            samples: &samples,
            faults: &faults,
            duration_ms: 0,
        };
        let svg = render_svg(&spec);
        well_formed(&svg);
        let d = Data::new(&spec, 1.0);
        assert_eq!(d.acked_count, 3);
        assert_eq!(d.unacked.len(), 1);
        assert_eq!(d.p50, Some(0.2));
    }

    #[test]
    fn fan_out_style_draws_below_a_millisecond() {
        let samples = [
            Sample {
                at_ms: 0,
                latency_ms: Some(0.3),
            },
            Sample {
                at_ms: 500,
                latency_ms: Some(40.0),
            },
            Sample {
                at_ms: 900,
                latency_ms: None,
            },
        ];
        let spec = ChartSpec {
            title: "load",
            samples: &samples,
            faults: &[],
            duration_ms: 1_000,
        };
        let svg = render_svg_with(&spec, &Style::FAN_OUT);
        well_formed(&svg);
        assert!(svg.contains(">0.1</text>") && svg.contains(">1000</text>"));
        assert!(svg.contains("2 deliveries") && svg.contains("1 never delivered"));
        assert!(!svg.contains("acknowledged") && !svg.contains("rate step"));
        let d = Data::new(&spec, Style::FAN_OUT.floor_ms);
        assert!(d.y(0.3) < d.y(0.1) && d.y(0.1) == PB);
        // The chaos style keeps its 1 ms floor.
        assert_eq!(Data::new(&spec, Style::ACKS.floor_ms).y(0.3), PB);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile::<f64>(&[], 99.0), None);
    }

    /// `cargo test -p troupe-chaos --lib chart -- --ignored` writes /tmp/chart-example.svg.
    #[test]
    #[ignore]
    fn example_chart() {
        write_example("/tmp/chart-example.svg").unwrap();
    }
}
