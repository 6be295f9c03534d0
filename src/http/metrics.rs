//! `GET /metrics`: Prometheus text, built from the latest snapshot at each scrape (Neon's
//! metric names, so its dashboards keep working).

use prometheus::{Counter, Encoder, Gauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::engine::Snapshot;

/// The build label of `compute_ctl_up`: `BUILD_TAG` at compile time, else `latest` (as Neon).
pub const BUILD_TAG: &str = match option_env!("BUILD_TAG") {
    Some(tag) => tag,
    None => "latest",
};

pub fn render(snapshot: &Snapshot) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let up = IntGaugeVec::new(
        Opts::new("compute_ctl_up", "Compute status; exactly one series is 1"),
        &["build_tag", "status"],
    )?;
    registry.register(Box::new(up.clone()))?;
    up.with_label_values(&[BUILD_TAG, &snapshot.status.to_string()])
        .set(1);

    // Both always appear (0 until the monitor saw Postgres down), as on Neon.
    let current = Gauge::new(
        "compute_pg_current_downtime_ms",
        "Milliseconds since Postgres last answered the compute monitor; 0 when it answers",
    )?;
    registry.register(Box::new(current.clone()))?;
    current.set(snapshot.current_downtime_ms as f64);
    let total = Counter::new(
        "compute_pg_downtime_ms_total",
        "Cumulative Postgres downtime seen by the compute monitor, in milliseconds",
    )?;
    registry.register(Box::new(total.clone()))?;
    total.inc_by(snapshot.total_downtime_ms as f64);

    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8(out).expect("the text encoder writes UTF-8"))
}
