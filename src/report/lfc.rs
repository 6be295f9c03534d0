//! The states of Neon's local file cache (LFC) prewarm and offload, as `/lfc/prewarm` and
//! `/lfc/offload` answer them: Neon's `LfcPrewarmState` and `LfcOffloadState`, with a `reason`
//! on `skipped` (ours: Neon's has none) so that a compute on stock PostgreSQL says why.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LfcPrewarmState {
    #[default]
    NotPrewarmed,
    Prewarming,
    Completed {
        total: i32,
        prewarmed: i32,
        skipped: i32,
        state_download_time_ms: u64,
        uncompress_time_ms: u64,
        prewarm_time_ms: u64,
    },
    Failed {
        error: String,
    },
    /// Nothing to prewarm from (no state stored), or no local file cache to prewarm.
    Skipped {
        reason: String,
    },
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LfcOffloadState {
    #[default]
    NotOffloaded,
    Offloading,
    Completed {
        state_query_time_ms: u64,
        compress_time_ms: u64,
        state_upload_time_ms: u64,
    },
    Failed {
        error: String,
    },
    /// The cache holds nothing to offload, or there is no local file cache.
    Skipped {
        reason: String,
    },
}

/// A change of either state, reported by the LFC effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LfcState {
    Prewarm(LfcPrewarmState),
    Offload(LfcOffloadState),
}

/// What `/metrics` counts: Neon's `compute_ctl_lfc_{prewarms,prewarm_errors,offloads,
/// offload_errors}_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LfcCounts {
    pub prewarms: u64,
    pub prewarm_errors: u64,
    pub offloads: u64,
    pub offload_errors: u64,
}

impl LfcCounts {
    /// Count a state change: a start is a request, a failure an error.
    pub fn count(&mut self, state: &LfcState) {
        match state {
            LfcState::Prewarm(LfcPrewarmState::Prewarming) => self.prewarms += 1,
            LfcState::Prewarm(LfcPrewarmState::Failed { .. }) => self.prewarm_errors += 1,
            LfcState::Offload(LfcOffloadState::Offloading) => self.offloads += 1,
            LfcState::Offload(LfcOffloadState::Failed { .. }) => self.offload_errors += 1,
            _ => {}
        }
    }
}
