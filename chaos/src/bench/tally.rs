//! From what every editor saw in one step to the step's delivery figures: counts, latency
//! percentiles, a per-second timeline and the samples of the picture.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::report::Second;
use super::stats::{percentile, Summary};
use super::typist::StepResult;
use crate::chart::Sample;

/// The measured window, in µs of the markers' clock, and the picture's zero.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub start_us: u64,
    pub end_us: u64,
    /// Time zero of the samples and the timeline (the first step's window start).
    pub origin_us: u64,
}

impl Window {
    fn contains(&self, us: u64) -> bool {
        us >= self.start_us && us < self.end_us
    }
}

/// Delivery figures of one step.
#[derive(Default)]
pub(crate) struct Tally {
    pub edits_sent: u64,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub window_deliveries: u64,
    pub latency: Option<Summary>,
    pub ack_latency: Option<Summary>,
    pub disconnects: u64,
    pub close_codes: Vec<(String, u64)>,
    pub protocol_errors: u64,
    pub send_failures: u64,
    pub moved: u64,
    pub timeline: Vec<Second>,
    pub samples: Vec<Sample>,
}

/// Tallies the step; `editors` is the number of editors per scene and `results[i]` belongs
/// to editor `i` (scene `i / editors`).
pub(crate) fn tally(results: &[StepResult], editors: u32, window: Window, acks: bool) -> Tally {
    let mut t = Tally::default();
    let ms_since_origin = |us: u64| us.saturating_sub(window.origin_us) / 1000;
    // Deliveries of each window edit, to find the ones that never arrived.
    let mut received: HashMap<(u32, u32), u32> = HashMap::new();
    let mut latencies = Vec::new();
    let mut ack_latencies = Vec::new();
    let mut seconds: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut close_codes: HashMap<String, u64> = HashMap::new();
    for r in results {
        t.edits_sent += r.sent.iter().filter(|(_, at)| window.contains(*at)).count() as u64;
        let mut seen = HashSet::with_capacity(r.receipts.len());
        for rc in &r.receipts {
            if !seen.insert((rc.sender, rc.seq)) {
                t.duplicates += 1;
                continue;
            }
            if window.contains(rc.recv_us) {
                t.window_deliveries += 1;
            }
            if !window.contains(rc.sent_us) {
                continue;
            }
            let latency = rc.recv_us.saturating_sub(rc.sent_us);
            *received.entry((rc.sender, rc.seq)).or_default() += 1;
            latencies.push(latency);
            seconds
                .entry(ms_since_origin(rc.sent_us) / 1000)
                .or_default()
                .push(latency);
            t.samples.push(Sample {
                at_ms: ms_since_origin(rc.sent_us),
                latency_ms: Some(latency as f64 / 1000.0),
            });
        }
        if acks {
            ack_latencies.extend(
                r.acks
                    .iter()
                    .filter(|(sent, _)| window.contains(*sent))
                    .map(|(_, lat)| *lat),
            );
        }
        t.protocol_errors += r.protocol_errors;
        t.send_failures += r.send_failures;
        t.moved += r.moved;
        if let Some(info) = &r.closed {
            t.disconnects += 1;
            let code = info.code.map_or_else(|| "none".to_owned(), |c| c.to_string());
            *close_codes.entry(code).or_default() += 1;
        }
    }
    let others = editors.saturating_sub(1);
    for (sender, r) in results.iter().enumerate() {
        for &(seq, at) in r.sent.iter().filter(|(_, at)| window.contains(*at)) {
            let got = received.get(&(sender as u32, seq)).copied().unwrap_or(0);
            for _ in got..others {
                t.samples.push(Sample {
                    at_ms: ms_since_origin(at),
                    latency_ms: None,
                });
            }
        }
    }
    t.deliveries = latencies.len() as u64;
    t.deliveries_expected = t.edits_sent * u64::from(others);
    t.missing = t.deliveries_expected.saturating_sub(t.deliveries);
    t.latency = (!latencies.is_empty()).then(|| Summary::from_micros(&mut latencies));
    t.ack_latency = (acks && !ack_latencies.is_empty()).then(|| Summary::from_micros(&mut ack_latencies));
    t.timeline = seconds
        .into_iter()
        .map(|(s, mut lat)| {
            lat.sort_unstable();
            let ms = |us: u64| us as f64 / 1000.0;
            Second {
                at_s: s,
                deliveries: lat.len() as u64,
                p50_ms: ms(percentile(&lat, 50.0).unwrap_or_default()),
                p99_ms: ms(percentile(&lat, 99.0).unwrap_or_default()),
                max_ms: ms(lat[lat.len() - 1]),
            }
        })
        .collect();
    let mut codes: Vec<(String, u64)> = close_codes.into_iter().collect();
    codes.sort();
    t.close_codes = codes;
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::typist::Receipt;

    fn receipt(sender: u32, seq: u32, sent_us: u64, recv_us: u64) -> Receipt {
        Receipt {
            sender,
            seq,
            sent_us,
            recv_us,
        }
    }

    #[test]
    fn counts_latencies_and_losses() {
        let window = Window {
            start_us: 1_000_000,
            end_us: 3_000_000,
            origin_us: 1_000_000,
        };
        // One scene of three editors; editor 0 types twice in the window and once before.
        let results = vec![
            StepResult {
                sent: vec![(1, 500_000), (2, 1_000_000), (3, 2_500_000)],
                ..Default::default()
            },
            StepResult {
                receipts: vec![
                    receipt(0, 1, 500_000, 501_000),
                    receipt(0, 2, 1_000_000, 1_002_000),
                    receipt(0, 2, 1_000_000, 1_002_000),
                    receipt(0, 3, 2_500_000, 2_504_000),
                ],
                ..Default::default()
            },
            StepResult {
                receipts: vec![receipt(0, 2, 1_000_000, 1_001_000)],
                ..Default::default()
            },
        ];
        let t = tally(&results, 3, window, false);
        assert_eq!(t.edits_sent, 2);
        assert_eq!(t.deliveries_expected, 4);
        assert_eq!(t.deliveries, 3);
        assert_eq!(t.missing, 1);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.window_deliveries, 3);
        let lat = t.latency.expect("latency");
        assert_eq!((lat.count, lat.max), (3, 4.0));
        assert_eq!(t.samples.iter().filter(|s| s.latency_ms.is_none()).count(), 1);
        assert_eq!(t.timeline.len(), 2);
        assert_eq!((t.timeline[0].at_s, t.timeline[0].deliveries), (0, 2));
        assert_eq!((t.timeline[1].at_s, t.timeline[1].max_ms), (1, 4.0));
        assert!(t.ack_latency.is_none());
    }

    #[test]
    fn nothing_delivered_is_none_not_zero() {
        let window = Window {
            start_us: 0,
            end_us: 1_000,
            origin_us: 0,
        };
        let t = tally(&[StepResult::default()], 1, window, true);
        assert!(t.latency.is_none() && t.ack_latency.is_none());
        assert_eq!((t.deliveries, t.missing), (0, 0));
    }
}
