//! Percentiles and medians.

use serde::{Deserialize, Serialize};

/// Distribution of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises samples given in microseconds (sorted in place).
    pub fn from_micros(samples: &mut [u64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Summary {
            count: samples.len() as u64,
            mean: sum as f64 / samples.len() as f64 / 1000.0,
            p50: ms(percentile(samples, 50.0).unwrap_or_default()),
            p95: ms(percentile(samples, 95.0).unwrap_or_default()),
            p99: ms(percentile(samples, 99.0).unwrap_or_default()),
            max: ms(samples[samples.len() - 1]),
        }
    }
}

/// Nearest-rank percentile (`p` in percent) of sorted samples; `None` when empty. The one
/// percentile of the load reports, the chaos charts and the tests.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median of the values (mean of the middle two for an even count); `None` when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&s, 50.0), Some(50));
        assert_eq!(percentile(&s, 95.0), Some(95));
        assert_eq!(percentile(&s, 99.0), Some(99));
        assert_eq!(percentile(&s, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile::<u64>(&[], 99.0), None);
    }

    #[test]
    fn summary_in_ms() {
        let mut s = vec![3000, 1000, 2000];
        let sum = Summary::from_micros(&mut s);
        assert_eq!(sum.count, 3);
        assert_eq!(sum.p50, 2.0);
        assert_eq!(sum.max, 3.0);
        assert_eq!(sum.mean, 2.0);
        assert_eq!(Summary::from_micros(&mut []), Summary::default());
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0]), Some(2.5));
        assert_eq!(median([]), None);
        assert_eq!(median([f64::NAN, 1.0]), Some(1.0));
    }
}
