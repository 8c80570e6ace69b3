//! `--ramp`: the highest rate a server sustains with fan-out p99 under a limit. The same
//! editors measure window after window, the rate growing by a factor each time, until a
//! window fails (p99 at or over the limit, errors, missing deliveries) or the cap is reached.

use super::load::{LoadError, LoadOptions, Session};
use super::report::{step_passes, RampReport, Report};

/// How the rate grows and when a step fails.
#[derive(Debug, Clone)]
pub struct RampOptions {
    /// Each step's rate is the previous one times this (> 1).
    pub factor: f64,
    /// No step goes above this rate (edits/s per editor).
    pub max_rate: f64,
    /// A step passes while its fan-out p99 is under this.
    pub p99_limit_ms: f64,
}

impl Default for RampOptions {
    fn default() -> Self {
        RampOptions {
            factor: 1.5,
            max_rate: 1000.0,
            p99_limit_ms: 100.0,
        }
    }
}

/// Runs steps from `opts.rate` up; every step is measured like a plain run
/// (`opts.warmup`, `opts.duration`, `opts.drain`).
pub async fn ramp(opts: &LoadOptions, ramp: &RampOptions) -> Result<RampReport, LoadError> {
    let bad = |s: &str| Err(LoadError::Options(s.to_owned()));
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return bad("--ramp starts at --rate, which must be positive");
    }
    if opts.editors < 2 {
        return bad("--ramp needs at least 2 editors per scene (deliveries are what it measures)");
    }
    if !(ramp.factor.is_finite() && ramp.factor > 1.0) {
        return bad("--ramp-factor must be above 1");
    }
    if !(ramp.max_rate.is_finite() && ramp.max_rate >= opts.rate) {
        return bad("--ramp-max must be at least --rate");
    }
    if !(ramp.p99_limit_ms.is_finite() && ramp.p99_limit_ms > 0.0) {
        return bad("--ramp-p99-ms must be positive");
    }
    let mut session = Session::connect(opts).await?;
    let mut steps = Vec::new();
    let mut best_rate = None;
    let mut rate = opts.rate;
    let stopped = loop {
        let report = match session.step(rate).await {
            Ok(report) => report,
            Err(e) => {
                session.close().await;
                return Err(e);
            }
        };
        let verdict = failure(&report, ramp.p99_limit_ms);
        tracing::info!(rate, verdict = verdict.as_deref().unwrap_or("pass"), "ramp step");
        steps.push(report);
        if let Some(why) = verdict {
            break format!("{rate:.2} edits/s per editor failed: {why}");
        }
        best_rate = Some(rate);
        let next = rate * ramp.factor;
        // A hair of tolerance: 2 x 1.5 x 1.5 must not miss a cap of 4.5.
        if next > ramp.max_rate * (1.0 + 1e-9) {
            break format!(
                "the next rate ({next:.2} edits/s per editor) is above --ramp-max {}",
                ramp.max_rate
            );
        }
        rate = next;
    };
    session.close().await;
    Ok(RampReport {
        label: opts.label.clone(),
        url: opts.url.clone(),
        p99_limit_ms: ramp.p99_limit_ms,
        factor: ramp.factor,
        max_rate: ramp.max_rate,
        steps,
        best_rate,
        stopped,
    })
}

/// Why a step failed, or `None` if it passed.
fn failure(r: &Report, p99_limit_ms: f64) -> Option<String> {
    if step_passes(r, p99_limit_ms) {
        return None;
    }
    let mut why = Vec::new();
    match &r.latency_ms {
        Some(l) if l.p99 >= p99_limit_ms => why.push(format!("p99 {:.1} ms >= {p99_limit_ms} ms", l.p99)),
        Some(_) => {}
        None => why.push("no deliveries".to_owned()),
    }
    if r.errors > 0 {
        why.push(format!("{} errors", r.errors));
    }
    if r.missing > 0 {
        why.push(format!("{} deliveries missing", r.missing));
    }
    Some(why.join(", "))
}
