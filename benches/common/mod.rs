//! What the interleaved benchmarks (`paired.rs`, `async_paired.rs`, `replicas.rs`,
//! `tower_layer.rs`) share: their knobs from the environment and the quantiles they report.

/// The environment variable `name` as a number, `default` when unset or unreadable.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The `q` quantile (0.0..=1.0) of `sorted`, which is sorted and not empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
