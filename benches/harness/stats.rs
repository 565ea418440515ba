//! Summaries of repeated measurements: median, p95, p99 and max.

/// The summary of one metric's samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
}

/// Median (mean of the two middle values for an even count), p95 and p99
/// (nearest rank) and max. `None` for no samples.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    let rank = |q: f64| ((q * n as f64).ceil() as usize).clamp(1, n);
    Some(Summary {
        n,
        median,
        p95: sorted[rank(0.95) - 1],
        p99: sorted[rank(0.99) - 1],
        max: sorted[n - 1],
        min: sorted[0],
    })
}

/// The median of `samples`, or NaN when there are none.
pub fn median(samples: &[f64]) -> f64 {
    summarize(samples).map(|s| s.median).unwrap_or(f64::NAN)
}
