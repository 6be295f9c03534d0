//! `GET /metrics`: Prometheus text, built from the latest snapshot at each scrape (Neon's
//! metric names, so its dashboards keep working).

use prometheus::{
    Counter, Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::engine::Snapshot;
use crate::report::vm::Figures;

use crate::node::BUILD_TAG;

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

    // Only with --control-plane-uri (Neon omits a family without samples).
    if !snapshot.cplane_requests.is_empty() {
        let requests = IntCounterVec::new(
            Opts::new(
                "compute_ctl_cplane_requests_total",
                "Requests to the control plane, by rpc and HTTP status (unknown: no answer)",
            ),
            &["rpc", "http_status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        for (status, count) in &snapshot.cplane_requests {
            requests
                .with_label_values(&["GetConfig", status])
                .inc_by(*count);
        }
    }

    let lfc = snapshot.lfc_counts;
    for (name, help, value) in [
        (
            "compute_ctl_lfc_prewarms_total",
            "LFC prewarm requests",
            lfc.prewarms,
        ),
        (
            "compute_ctl_lfc_prewarm_errors_total",
            "LFC prewarm failures",
            lfc.prewarm_errors,
        ),
        (
            "compute_ctl_lfc_offloads_total",
            "LFC offload requests",
            lfc.offloads,
        ),
        (
            "compute_ctl_lfc_offload_errors_total",
            "LFC offload failures",
            lfc.offload_errors,
        ),
    ] {
        let counter = IntCounter::new(name, help)?;
        registry.register(Box::new(counter.clone()))?;
        counter.inc_by(value);
    }

    // Neon's name: Postgres calls /refresh_configuration when its page stream fails.
    let refreshes = IntCounter::new(
        "pg_cctl_pagestream_request_errors_total",
        "POST /refresh_configuration calls (Neon counts them as page-stream request errors)",
    )?;
    registry.register(Box::new(refreshes.clone()))?;
    refreshes.inc_by(snapshot.refresh_requests);

    // Once read after a configuration (Neon omits a family without samples).
    if !snapshot.installed_extensions.is_empty() {
        let extensions = IntGaugeVec::new(
            Opts::new(
                "compute_installed_extensions",
                "Number of databases where the version of extension is installed",
            ),
            &["extension_name", "version", "owned_by_superuser"],
        )?;
        registry.register(Box::new(extensions.clone()))?;
        for e in &snapshot.installed_extensions {
            let owned = if e.owned_by_superuser { "1" } else { "0" };
            extensions
                .with_label_values(&[e.extname.as_str(), e.version.as_str(), owned])
                .set(e.n_databases.try_into().unwrap_or(i64::MAX));
        }
    }

    // Neon's counter of extension downloads; no family before the first.
    if !snapshot.remote_ext_requests.is_empty() {
        let requests = IntCounterVec::new(
            Opts::new(
                "compute_ctl_remote_ext_requests_total",
                "Remote extension archive downloads, by HTTP status (unknown: no answer) and archive",
            ),
            &["http_status", "filename"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        for ((status, filename), count) in &snapshot.remote_ext_requests {
            requests
                .with_label_values(&[status, filename])
                .inc_by(*count);
        }
    }

    // Neon's counter; like Neon, no family until a migration failed.
    if !snapshot.migrations_failed.is_empty() {
        let failed = IntCounterVec::new(
            Opts::new(
                "compute_ctl_db_migration_failed_total",
                "Failed runs of Neon's migrations, by migration id",
            ),
            &["migration_id"],
        )?;
        registry.register(Box::new(failed.clone()))?;
        for (id, count) in &snapshot.migrations_failed {
            failed.with_label_values(&[&id.to_string()]).inc_by(*count);
        }
    }

    // Ours: only with --pgbouncer-ini (once pgbouncer was first started).
    if snapshot.pgbouncer.is_some() {
        let restarts = IntCounter::new(
            "compute_ctl_pgbouncer_restarts_total",
            "Times compute_ctl started pgbouncer again after it died",
        )?;
        restarts.inc_by(snapshot.pgbouncer_restarts);
        registry.register(Box::new(restarts))?;
    }

    if snapshot.vm_monitor.active {
        vm_monitor(&registry, &snapshot.vm_monitor)?;
    }

    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8(out).expect("the text encoder writes UTF-8"))
}

/// The vm-monitor's figures (only while it runs, i.e. with `AUTOSCALING`).
fn vm_monitor(registry: &Registry, f: &Figures) -> Result<(), prometheus::Error> {
    let gauge = |name: &str, help: &str, value: u64| -> Result<(), prometheus::Error> {
        let g = IntGauge::new(name, help)?;
        g.set(value.try_into().unwrap_or(i64::MAX));
        registry.register(Box::new(g))
    };
    let counter = |name: &str, help: &str, value: u64| -> Result<(), prometheus::Error> {
        let c = IntCounter::new(name, help)?;
        c.inc_by(value);
        registry.register(Box::new(c))
    };
    gauge(
        "compute_vm_monitor_memory_used_bytes",
        "Non-reclaimable memory (active_anon + inactive_anon), averaged over the last samples",
        f.memory_used_bytes,
    )?;
    gauge(
        "compute_vm_monitor_memory_size_bytes",
        "The memory thresholds are computed from: the VM's as the agent last named it (less the sys buffer), or MemTotal",
        f.memory_size_bytes,
    )?;
    gauge(
        "compute_vm_monitor_memory_limit_bytes",
        "The watched cgroup's memory limit, 0 when it has none below MemTotal",
        f.memory_limit_bytes.unwrap_or(0),
    )?;
    gauge(
        "compute_vm_monitor_memory_threshold_bytes",
        "Non-reclaimable memory at which an upscale is requested",
        f.memory_threshold_bytes,
    )?;
    gauge(
        "compute_vm_monitor_agent_connections",
        "Open autoscaler-agent connections",
        f.agent_connections,
    )?;
    counter(
        "compute_vm_monitor_agent_connections_total",
        "Autoscaler-agent connections that completed the handshake",
        f.agent_connections_total,
    )?;
    counter(
        "compute_vm_monitor_upscale_requests_total",
        "UpscaleRequest messages sent to the agent",
        f.upscale_requests_total,
    )?;
    counter(
        "compute_vm_monitor_upscale_notifications_total",
        "UpscaleNotification messages received from the agent",
        f.upscale_notifications_total,
    )?;
    counter(
        "compute_vm_monitor_memory_pressure_events_total",
        "Firings of the PSI memory pressure trigger",
        f.pressure_events_total,
    )?;
    let downscales = IntCounterVec::new(
        Opts::new(
            "compute_vm_monitor_downscale_requests_total",
            "DownscaleRequest messages by result: approved, denied, or failed (InternalError)",
        ),
        &["result"],
    )?;
    registry.register(Box::new(downscales.clone()))?;
    for (result, value) in [
        ("approved", f.downscale_approved_total),
        ("denied", f.downscale_denied_total),
        ("failed", f.downscale_failed_total),
    ] {
        downscales.with_label_values(&[result]).inc_by(value);
    }
    if let Some(bytes) = f.file_cache_size_bytes {
        gauge(
            "compute_vm_monitor_file_cache_size_bytes",
            "The size last set for the Neon local file cache",
            bytes,
        )?;
    }
    Ok(())
}
