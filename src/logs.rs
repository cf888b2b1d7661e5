//! How many refusal lines a VM writes: one per refused handshake would let any client fill
//! Envoy's log (up to about 3 KB a line), so lines are let through at a steady rate with a
//! burst, and the ones left out are counted and reported with the next line written. Counters
//! are not limited: they stay exact.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Refusal lines a VM writes per second, on average.
pub const LINES_PER_SECOND: u64 = 10;
/// Refusal lines a VM may write at once, after a quiet time.
pub const BURST: u64 = 50;

/// A token bucket of log lines, in thousandths of a line, refilled by the host's clock. Shared
/// by the streams of a configuration (every worker thread in the native build): two threads
/// that update it at once may let a line more or less through, never miscount a counter.
#[derive(Debug)]
pub struct LogLimiter {
    /// Thousandths of a line that may be written now, at most `BURST * 1000`.
    allowance: AtomicU64,
    /// When the allowance was last topped up (milliseconds since the Unix epoch).
    at: AtomicU64,
    /// Lines left out since the last one written.
    left_out: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> LogLimiter {
        LogLimiter {
            allowance: AtomicU64::new(BURST * 1000),
            at: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }
}

impl Clone for LogLimiter {
    /// A copy starts with a full allowance: each VM limits its own lines.
    fn clone(&self) -> LogLimiter {
        LogLimiter::default()
    }
}

impl LogLimiter {
    /// `line`, if one may be written at `now` (milliseconds since the Unix epoch), with the
    /// number of lines left out before it; `None` if it is left out.
    pub fn admit(&self, line: String, now: u64) -> Option<String> {
        self.admit_with(|| line, now)
    }

    /// [`LogLimiter::admit`] for a line written only if it is let through: a flood of refusals
    /// costs no formatting of the lines left out.
    pub fn admit_with(&self, line: impl FnOnce() -> String, now: u64) -> Option<String> {
        let elapsed = now.saturating_sub(self.at.fetch_max(now, Relaxed));
        let refilled = self.allowance.load(Relaxed).saturating_add(elapsed.saturating_mul(LINES_PER_SECOND));
        let allowance = refilled.min(BURST * 1000);
        if allowance < 1000 {
            self.allowance.store(allowance, Relaxed);
            self.left_out.fetch_add(1, Relaxed);
            return None;
        }
        self.allowance.store(allowance - 1000, Relaxed);
        match self.left_out.swap(0, Relaxed) {
            0 => Some(line()),
            left_out => Some(format!("{} (and {left_out} refusal lines left out before this one)", line())),
        }
    }

    /// The lines left out since the last one written, reported and reset once a second has
    /// passed without one: for a timer, so that the end of a flood is told too.
    pub fn take_left_out(&self, now: u64) -> Option<u64> {
        let quiet = now.saturating_sub(self.at.load(Relaxed)) >= 1000;
        match quiet {
            true => Some(self.left_out.swap(0, Relaxed)).filter(|&left_out| left_out > 0),
            false => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: u64 = 1_790_000_000_000;

    #[test]
    fn a_burst_is_written_and_the_rest_left_out() {
        let limiter = LogLimiter::default();
        let written = (0..BURST + 20).filter(|_| limiter.admit("x".into(), NOW).is_some()).count();
        assert_eq!(written as u64, BURST);
    }

    #[test]
    fn lines_come_back_at_the_steady_rate_and_say_how_many_were_left_out() {
        let limiter = LogLimiter::default();
        for _ in 0..BURST + 7 {
            limiter.admit("x".into(), NOW);
        }
        assert_eq!(limiter.admit("x".into(), NOW + 50), None, "half a line's time");
        let line = limiter.admit("x".into(), NOW + 100).unwrap();
        assert_eq!(line, "x (and 8 refusal lines left out before this one)");
        assert_eq!(limiter.admit("y".into(), NOW + 200).unwrap(), "y");
    }

    #[test]
    fn the_count_left_out_is_reported_once_it_has_gone_quiet() {
        let limiter = LogLimiter::default();
        for _ in 0..BURST + 3 {
            limiter.admit("x".into(), NOW);
        }
        assert_eq!(limiter.take_left_out(NOW + 500), None);
        assert_eq!(limiter.take_left_out(NOW + 1000), Some(3));
        assert_eq!(limiter.take_left_out(NOW + 2000), None);
    }

    #[test]
    fn a_clock_that_goes_back_gives_nothing_extra() {
        let limiter = LogLimiter::default();
        for _ in 0..BURST {
            limiter.admit("x".into(), NOW);
        }
        assert_eq!(limiter.admit("x".into(), NOW - 10_000), None);
    }
}
