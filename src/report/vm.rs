//! What the vm-monitor reports: figures for `/metrics`, folded into the engine's snapshot. The
//! machine decides nothing from them; what changes the compute (resizing the file cache) is a
//! request to the machine instead.

/// The memory the thresholds are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// The VM's memory as the agent last named it (less the sys buffer), or MemTotal.
    pub memory: u64,
    /// The cgroup's limit, when it has one below MemTotal.
    pub limit: Option<u64>,
    pub threshold: u64,
}

/// What the vm-monitor tells the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Started { source: String },
    Memory { used: u64, size: Size },
    AgentConnected(bool),
    UpscaleRequested,
    PressureEvent,
    Downscale(Outcome),
    Upscaled,
    FileCacheSize(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    Denied,
    Failed,
}

/// The vm-monitor's figures in the engine's snapshot (`active` false: it does not run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub active: bool,
    pub memory_used_bytes: u64,
    pub memory_size_bytes: u64,
    pub memory_threshold_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    /// Open agent connections (briefly 2 while a new one replaces the old).
    pub agent_connections: u64,
    pub agent_connections_total: u64,
    pub upscale_requests_total: u64,
    pub upscale_notifications_total: u64,
    pub pressure_events_total: u64,
    pub downscale_approved_total: u64,
    pub downscale_denied_total: u64,
    pub downscale_failed_total: u64,
    pub file_cache_size_bytes: Option<u64>,
}

impl Report {
    /// Fold this report into the snapshot's figures (called by the engine).
    pub fn apply(self, f: &mut Figures) {
        match self {
            Report::Started { .. } => f.active = true,
            Report::Memory { used, size } => {
                f.memory_used_bytes = used;
                f.memory_size_bytes = size.memory;
                f.memory_limit_bytes = size.limit;
                f.memory_threshold_bytes = size.threshold;
            }
            Report::AgentConnected(true) => {
                f.agent_connections += 1;
                f.agent_connections_total += 1;
            }
            Report::AgentConnected(false) => {
                f.agent_connections = f.agent_connections.saturating_sub(1)
            }
            Report::UpscaleRequested => f.upscale_requests_total += 1,
            Report::PressureEvent => f.pressure_events_total += 1,
            Report::Downscale(Outcome::Approved) => f.downscale_approved_total += 1,
            Report::Downscale(Outcome::Denied) => f.downscale_denied_total += 1,
            Report::Downscale(Outcome::Failed) => f.downscale_failed_total += 1,
            Report::Upscaled => f.upscale_notifications_total += 1,
            Report::FileCacheSize(bytes) => f.file_cache_size_bytes = Some(bytes),
        }
    }
}
