//! How often a base backup is tried again: Neon's schedule for the pageserver (10 retries after
//! the first attempt, 500 ms then ×1.5: about 56 s in all), used for an upstream primary too,
//! so a replica started beside its primary waits for it instead of failing at once.

use std::time::Duration;

use anyhow::Context;

/// Retries after the first attempt (Neon's `DEFAULT_ATTEMPTS`).
const RETRIES: u32 = 10;
/// Neon's variable for tests that want fewer retries.
pub const RETRIES_ENV: &str = "NEON_COMPUTE_TESTING_BASEBACKUP_RETRIES";
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const FACTOR: f64 = 1.5;

#[derive(Debug)]
pub struct Retries {
    retries: u32,
    failed: u32,
    pause: Duration,
}

impl Retries {
    /// Neon's schedule, with the count from [`RETRIES_ENV`] when it is set.
    pub fn from_env() -> anyhow::Result<Self> {
        let retries = match std::env::var(RETRIES_ENV) {
            Ok(value) => value
                .parse()
                .with_context(|| format!("{RETRIES_ENV}={value:?} is not a number of retries"))?,
            Err(_) => RETRIES,
        };
        Ok(Self {
            retries,
            failed: 0,
            pause: FIRST_PAUSE,
        })
    }

    /// Count a failed attempt: the pause before the next one, or `None` when none is left.
    pub fn failed(&mut self) -> Option<Duration> {
        self.failed += 1;
        if self.failed > self.retries {
            return None;
        }
        let pause = self.pause;
        self.pause = self.pause.mul_f64(FACTOR);
        Some(pause)
    }

    /// Attempts made so far, for errors: "(3 attempts)".
    pub fn attempts(&self) -> String {
        match self.failed {
            1 => "1 attempt".into(),
            n => format!("{n} attempts"),
        }
    }

    /// For logs after a failure: "attempt 2/10" is the second failure of 10 retries.
    pub fn progress(&self) -> String {
        format!("attempt {}/{}", self.failed, self.retries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neon_schedule() {
        let mut r = Retries {
            retries: RETRIES,
            failed: 0,
            pause: FIRST_PAUSE,
        };
        let pauses: Vec<_> = std::iter::from_fn(|| r.failed()).collect();
        assert_eq!(pauses.len(), 10);
        assert_eq!(pauses[0], Duration::from_millis(500));
        assert_eq!(pauses[1], Duration::from_millis(750));
        let total: Duration = pauses.iter().sum();
        assert!((56..58).contains(&total.as_secs()), "{total:?}");
        assert_eq!(r.attempts(), "11 attempts");
    }

    #[test]
    fn no_retries() {
        let mut r = Retries {
            retries: 0,
            failed: 0,
            pause: FIRST_PAUSE,
        };
        assert_eq!(r.failed(), None);
        assert_eq!(r.attempts(), "1 attempt");
    }
}
