//! The vm-monitor: cooperation with Neon's autoscaler-agent when the compute runs in a VM
//! (the `AUTOSCALING` environment variable is set).
//!
//! It tells the agent when memory runs short (`UpscaleRequest`) and answers its downscale
//! requests, approving only sizes that leave room for what Postgres uses now. It is started by
//! the effects at the first `Running` (with the compute monitor) and stopped by the effects'
//! cancellation token at termination. What it learns goes to the engine as [`Report`]s; the
//! engine keeps the figures in its snapshot, where `/metrics` reads them.
//!
//! - [`protocol`]: the wire format; [`dispatcher`]: the websocket server and one agent
//!   connection; [`cgroup`]: memory figures and PSI; [`filecache`]: the Neon LFC.
//! - Decisions (thresholds, approve/deny) are the pure functions of this module.

pub mod cgroup;
pub mod dispatcher;
pub mod filecache;
pub mod protocol;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::report::Reporter;
pub use crate::report::vm::{Figures, Outcome, Report, Size};
use cgroup::{MemorySource, PressureWatch, PsiTrigger};
use filecache::{CacheSizing, MIB};

/// Whether autoscaling is on: the variable's presence, whatever its value (as Neon).
pub fn enabled() -> bool {
    std::env::var_os("AUTOSCALING").is_some()
}

/// Neon's tunables (all configurable by flags, see `cli.rs`).
#[derive(Debug, Clone)]
pub struct Tunables {
    /// The part of the memory kept free of non-reclaimable memory: the threshold is
    /// `(1 - overhead_fraction) x memory`.
    pub overhead_fraction: f64,
    /// Taken off the memory the agent names (the gap between a VM's memory and MemTotal).
    pub sys_buffer: u64,
    /// A downscale needs this much room between the new threshold and current use.
    pub downscale_buffer: u64,
    /// How often memory is sampled.
    pub poll_interval: Duration,
    /// How many samples are averaged; a downscale decision waits for this many fresh ones.
    pub history: usize,
    /// At most one `UpscaleRequest` per this interval.
    pub upscale_interval: Duration,
    /// PSI trigger that asks for an upscale when memory stalls; `None`: no PSI.
    pub psi_trigger: Option<PsiTrigger>,
    pub cache: CacheSizing,
}

impl Default for Tunables {
    fn default() -> Self {
        Self {
            overhead_fraction: 0.15,
            sys_buffer: 100 * MIB,
            downscale_buffer: 100 * MIB,
            poll_interval: Duration::from_millis(100),
            history: 5,
            upscale_interval: Duration::from_secs(1),
            psi_trigger: Some(PsiTrigger {
                full: false,
                stall: Duration::from_millis(100),
                window: Duration::from_secs(2),
            }),
            cache: CacheSizing::default(),
        }
    }
}

impl Tunables {
    /// The threshold for `memory` bytes, within the group's `limit` if it has one.
    pub fn threshold(&self, memory: u64, limit: Option<u64>) -> u64 {
        let memory = limit.map_or(memory, |limit| memory.min(limit));
        (memory as f64 * (1.0 - self.overhead_fraction)) as u64
    }

    /// The memory the agent's `mem` leaves for the compute.
    pub fn usable(&self, mem: u64) -> u64 {
        mem.saturating_sub(self.sys_buffer)
    }

    /// Whether shrinking to `target_mem` is safe with `used` bytes of non-reclaimable memory
    /// now; the reason is what the agent reads in `Status`.
    pub fn downscale(&self, target_mem: u64, used: u64, limit: Option<u64>) -> (bool, String) {
        let threshold = self.threshold(self.usable(target_mem), limit);
        let needed = used + self.downscale_buffer;
        let figures = format!(
            "new memory threshold {} (target {}), non-reclaimable memory {} + buffer {}",
            mib(threshold),
            mib(target_mem),
            mib(used),
            mib(self.downscale_buffer)
        );
        if threshold < needed {
            (false, format!("downscale denied: {figures}"))
        } else {
            (true, format!("downscale approved: {figures}"))
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// What the vm-monitor is given at startup.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub source: MemorySource,
    pub tunables: Tunables,
}

/// The rolling memory figures, published by the sampler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Average non-reclaimable memory over the last samples.
    pub used: u64,
    /// How many samples the average has (up to the history length).
    pub samples: usize,
    /// Samples taken since the start: a decision waits for this to move on.
    pub taken: u64,
    /// PSI trigger firings since the start.
    pub pressure_events: u64,
}

/// Everything the vm-monitor needs, prepared at startup (so a bad `--cgroup` or a busy port
/// stops compute_ctl before anything runs) and started at the first `Running`.
pub struct VmMonitor {
    config: Config,
    listener: tokio::net::TcpListener,
    mem_total: u64,
}

impl VmMonitor {
    pub async fn prepare(config: Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mem_total = cgroup::mem_total()?;
        // Read once now so that a group we cannot read is a startup error.
        config.source.anon_bytes()?;
        config.source.limit_bytes(mem_total)?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("--vm-monitor-addr {}: cannot listen", config.addr))?;
        Ok(Self {
            config,
            listener,
            mem_total,
        })
    }

    /// Sample memory and serve the agent until `cancel`.
    pub async fn run(
        self,
        node: Arc<Node>,
        reporter: Reporter,
        lfc_disabled: Arc<AtomicBool>,
        cancel: CancellationToken,
    ) {
        let VmMonitor {
            config,
            listener,
            mem_total,
        } = self;
        let source = config.source.describe();
        tracing::info!(
            addr = %config.addr,
            memory = source,
            "vm-monitor started"
        );
        reporter.vm_monitor(Report::Started { source });
        let limit = config.source.limit_bytes(mem_total).unwrap_or_else(|e| {
            tracing::warn!("vm-monitor: {e:#}");
            None
        });
        let tunables = &config.tunables;
        let size = Size {
            memory: mem_total,
            limit,
            threshold: tunables.threshold(mem_total, limit),
        };
        let (size_tx, size_rx) = watch::channel(size);
        let (stats_tx, stats_rx) = watch::channel(MemoryStats::default());
        tokio::spawn(sample(
            config.source.clone(),
            tunables.clone(),
            stats_tx,
            size_rx,
            reporter.clone(),
            cancel.clone(),
        ));
        let options = node.connect_options(node.default_database(), "vm-monitor");
        let file_cache = match filecache::FileCache::present(options).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::info!(
                    "vm-monitor: Postgres has no neon.file_cache_size_limit (not a Neon Postgres): the file cache is not resized"
                );
                false
            }
            Err(error) => {
                tracing::warn!(
                    "vm-monitor: cannot tell whether Postgres has a file cache ({error:#}): the file cache is not resized"
                );
                false
            }
        };
        let shared = Arc::new(dispatcher::Shared::new(
            config,
            reporter,
            stats_rx,
            size_tx,
            file_cache,
            lfc_disabled,
            cancel.clone(),
        ));
        shared.initial_file_cache(mem_total).await;
        dispatcher::serve(listener, shared, cancel).await;
    }
}

/// Count the firings of a PSI trigger until `cancel` or an error (the group removed).
async fn pressure(
    watch: PressureWatch,
    stats: Arc<watch::Sender<MemoryStats>>,
    reporter: Reporter,
    cancel: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            result = watch.fired() => result,
        };
        match result {
            Ok(()) => {
                tracing::info!("vm-monitor: memory pressure (PSI trigger fired)");
                stats.send_modify(|s| s.pressure_events += 1);
                reporter.vm_monitor(Report::PressureEvent);
            }
            Err(error) => {
                tracing::warn!("vm-monitor: PSI watch stopped: {error:#}");
                return;
            }
        }
    }
}

/// Sample memory every poll interval; publish the rolling average (and PSI firings) for the
/// connections, and report the figures to the engine about once a second.
async fn sample(
    source: MemorySource,
    tunables: Tunables,
    stats: watch::Sender<MemoryStats>,
    size: watch::Receiver<Size>,
    reporter: Reporter,
    cancel: CancellationToken,
) {
    let stats = Arc::new(stats);
    match (tunables.psi_trigger, source.pressure_file()) {
        (Some(trigger), Some(path)) => match PressureWatch::arm(&path, trigger) {
            Ok(watch) => {
                tracing::info!(
                    trigger = trigger.kernel_text(),
                    "vm-monitor: watching memory pressure in {}",
                    path.display()
                );
                tokio::spawn(pressure(
                    watch,
                    stats.clone(),
                    reporter.clone(),
                    cancel.clone(),
                ));
            }
            Err(error) => tracing::warn!("vm-monitor: no PSI: {error:#}"),
        },
        (Some(_), None) => {
            tracing::info!(
                "vm-monitor: no memory.pressure for {}: no PSI",
                source.describe()
            )
        }
        (None, _) => {}
    }
    let mut history = VecDeque::with_capacity(tunables.history);
    let mut ticks = tokio::time::interval(tunables.poll_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_report: Option<Instant> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {
                let used = match source.anon_bytes() {
                    Ok(used) => {
                        if failing {
                            tracing::info!("vm-monitor: memory figures readable again");
                            failing = false;
                        }
                        used
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!("vm-monitor: cannot read memory figures: {error:#}");
                            failing = true;
                        }
                        continue;
                    }
                };
                if history.len() == tunables.history {
                    history.pop_front();
                }
                history.push_back(used);
                let average = history.iter().sum::<u64>() / history.len() as u64;
                stats.send_modify(|s| {
                    s.used = average;
                    s.samples = history.len();
                    s.taken += 1;
                });
                if last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    last_report = Some(Instant::now());
                    reporter.vm_monitor(Report::Memory { used: average, size: *size.borrow() });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neon_thresholds() {
        let t = Tunables::default();
        // The reference's worked numbers: target mem -> new threshold, largest use allowed.
        for (target_mib, threshold_mib, allowed_mib) in [
            (256u64, 132.6, 32.6),
            (512, 350.2, 250.2),
            (1024, 785.4, 685.4),
            (2048, 1655.8, 1555.8),
            (4096, 3396.6, 3296.6),
            (8192, 6878.2, 6778.2),
        ] {
            let threshold = t.threshold(t.usable(target_mib * MIB), None);
            assert!(
                (threshold as f64 / MIB as f64 - threshold_mib).abs() < 0.1,
                "{target_mib}: {threshold}"
            );
            let allowed = (allowed_mib * MIB as f64) as u64 - 1024;
            assert!(
                t.downscale(target_mib * MIB, allowed, None).0,
                "{target_mib}"
            );
            let too_much = (allowed_mib * MIB as f64) as u64 + 1024 * 1024;
            let (ok, status) = t.downscale(target_mib * MIB, too_much, None);
            assert!(!ok, "{target_mib}");
            assert!(
                status.starts_with("downscale denied: new memory threshold"),
                "{status}"
            );
        }
        // Below the sys buffer nothing is usable.
        assert_eq!(t.usable(50 * MIB), 0);
    }

    #[test]
    fn a_cgroup_limit_caps_the_threshold() {
        let t = Tunables::default();
        assert_eq!(t.threshold(8 << 30, Some(100 * MIB)), 85 * MIB);
        assert_eq!(t.threshold(100 * MIB, Some(8 << 30)), 85 * MIB);
    }

    #[test]
    fn reports_add_up() {
        let mut f = Figures::default();
        for report in [
            Report::Started { source: "x".into() },
            Report::AgentConnected(true),
            Report::AgentConnected(false),
            Report::AgentConnected(true),
            Report::UpscaleRequested,
            Report::Downscale(Outcome::Approved),
            Report::Downscale(Outcome::Denied),
            Report::Downscale(Outcome::Denied),
            Report::Memory {
                used: 5,
                size: Size {
                    memory: 10,
                    limit: Some(9),
                    threshold: 7,
                },
            },
        ] {
            report.apply(&mut f);
        }
        assert!(f.active);
        assert_eq!(f.agent_connections, 1);
        assert_eq!(f.agent_connections_total, 2);
        assert_eq!(f.upscale_requests_total, 1);
        assert_eq!(
            (f.downscale_approved_total, f.downscale_denied_total),
            (1, 2)
        );
        assert_eq!(
            (
                f.memory_used_bytes,
                f.memory_size_bytes,
                f.memory_threshold_bytes
            ),
            (5, 10, 7)
        );
        assert_eq!(f.memory_limit_bytes, Some(9));
    }
}
