//! What the monitor's observations add up to: last activity and Postgres downtime.
//!
//! Pure arithmetic over the timestamps the observations carry (unix milliseconds, taken by the
//! monitor). Clocks may step backwards: no figure ever goes negative and `last_active` never
//! moves back.

/// Activity and downtime, as of the latest observation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Monitoring {
    /// The newest activity seen; `None` until there was some.
    last_active: Option<i64>,
    /// The latest successful check.
    last_ok: Option<i64>,
    /// The latest check, successful or not.
    last_check: Option<i64>,
    /// `at − last_ok` of the latest check when it failed, 0 when it succeeded.
    current_downtime_ms: u64,
    /// The sum of `at − last_check` over failed checks (Neon's `compute_pg_downtime_ms_total`).
    total_downtime_ms: u64,
    /// How long the latest outage lasted, set when Postgres answers again.
    last_outage_ms: u64,
    /// Whether the latest check succeeded; `None` before the first check.
    reachable: Option<bool>,
}

fn elapsed(from: i64, to: i64) -> u64 {
    u64::try_from(to.saturating_sub(from)).unwrap_or(0)
}

impl Monitoring {
    /// A check found activity at `at` (now, or the `state_change` of an idle session).
    pub fn activity(&mut self, at: i64) {
        if self.last_active.is_none_or(|last| at > last) {
            self.last_active = Some(at);
        }
    }

    /// A check succeeded at `at`.
    pub fn reachable(&mut self, at: i64) {
        if self.reachable == Some(false) {
            self.last_outage_ms = elapsed(self.last_ok.unwrap_or(at), at);
        }
        self.last_ok = Some(at);
        self.last_check = Some(at);
        self.current_downtime_ms = 0;
        self.reachable = Some(true);
    }

    /// A check failed at `at`. Before any successful check the outage counts from the first
    /// check, as the monitor only starts once Postgres has served the spec.
    pub fn unreachable(&mut self, at: i64) {
        let last_ok = *self.last_ok.get_or_insert(at);
        let last_check = self.last_check.unwrap_or(at);
        self.current_downtime_ms = elapsed(last_ok, at);
        self.total_downtime_ms = self
            .total_downtime_ms
            .saturating_add(elapsed(last_check, at));
        self.last_check = Some(at);
        self.reachable = Some(false);
    }

    pub fn last_active(&self) -> Option<i64> {
        self.last_active
    }

    pub fn current_downtime_ms(&self) -> u64 {
        self.current_downtime_ms
    }

    pub fn total_downtime_ms(&self) -> u64 {
        self.total_downtime_ms
    }

    /// The latest successful check, for logs.
    pub fn last_ok(&self) -> Option<i64> {
        self.last_ok
    }

    /// Duration of the outage that the latest successful check ended.
    pub fn last_outage_ms(&self) -> u64 {
        self.last_outage_ms
    }

    pub fn reachable_now(&self) -> Option<bool> {
        self.reachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_down_up_down_up() {
        let mut m = Monitoring::default();
        m.reachable(1_000);
        assert_eq!((m.current_downtime_ms(), m.total_downtime_ms()), (0, 0));
        m.unreachable(1_500);
        assert_eq!((m.current_downtime_ms(), m.total_downtime_ms()), (500, 500));
        m.unreachable(2_000);
        assert_eq!(
            (m.current_downtime_ms(), m.total_downtime_ms()),
            (1_000, 1_000)
        );
        m.reachable(2_500);
        assert_eq!((m.current_downtime_ms(), m.total_downtime_ms()), (0, 1_000));
        assert_eq!(m.last_outage_ms(), 1_500);
        m.unreachable(3_100);
        assert_eq!(
            (m.current_downtime_ms(), m.total_downtime_ms()),
            (600, 1_600)
        );
        m.reachable(3_600);
        assert_eq!((m.current_downtime_ms(), m.total_downtime_ms()), (0, 1_600));
        assert_eq!(m.last_outage_ms(), 1_100);
        assert_eq!(m.reachable_now(), Some(true));
    }

    #[test]
    fn a_first_failed_check_starts_the_outage_at_itself() {
        let mut m = Monitoring::default();
        assert_eq!(m.reachable_now(), None);
        m.unreachable(10_000);
        assert_eq!((m.current_downtime_ms(), m.total_downtime_ms()), (0, 0));
        m.unreachable(10_500);
        assert_eq!((m.current_downtime_ms(), m.total_downtime_ms()), (500, 500));
        m.reachable(11_000);
        assert_eq!(m.last_outage_ms(), 1_000);
    }

    #[test]
    fn clock_steps_backwards_never_make_negative_figures() {
        let mut m = Monitoring::default();
        m.reachable(5_000);
        m.unreachable(4_000);
        assert_eq!((m.current_downtime_ms(), m.total_downtime_ms()), (0, 0));
        m.unreachable(4_500);
        assert_eq!((m.current_downtime_ms(), m.total_downtime_ms()), (0, 500));
        m.unreachable(5_200);
        assert_eq!(
            (m.current_downtime_ms(), m.total_downtime_ms()),
            (200, 1_200)
        );
        m.reachable(1_000);
        assert_eq!((m.current_downtime_ms(), m.total_downtime_ms()), (0, 1_200));
        assert_eq!(m.last_outage_ms(), 0);
        // Extreme values saturate instead of overflowing.
        m.unreachable(i64::MIN);
        m.unreachable(i64::MAX);
        assert_eq!(m.total_downtime_ms(), 1_200 + i64::MAX as u64);
        m.unreachable(i64::MAX);
        m.reachable(i64::MIN);
        m.unreachable(i64::MAX);
        assert_eq!(m.total_downtime_ms(), u64::MAX);
    }

    #[test]
    fn last_active_is_null_until_activity_and_only_moves_forward() {
        let mut m = Monitoring::default();
        m.reachable(1_000);
        assert_eq!(m.last_active(), None);
        m.activity(2_000);
        assert_eq!(m.last_active(), Some(2_000));
        m.activity(1_500);
        assert_eq!(m.last_active(), Some(2_000));
        m.activity(2_000);
        m.activity(3_000);
        assert_eq!(m.last_active(), Some(3_000));
        // Downtime does not touch it.
        m.unreachable(4_000);
        assert_eq!(m.last_active(), Some(3_000));
    }
}
