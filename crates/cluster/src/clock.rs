//! The clock every lease deadline is measured on: `CLOCK_BOOTTIME`.
//!
//! A lease held in etcd keeps expiring while this machine is suspended or
//! its monitor is stopped, so the deadline a node computes for itself must
//! count that time too. `CLOCK_MONOTONIC` (and so `std::time::Instant` and
//! tokio's clock) stops during suspend; `CLOCK_BOOTTIME` does not. It is
//! also system-wide, so a deadline can be handed to another process (the
//! fence guard) as a plain number of nanoseconds and mean the same there.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use rustix::time::{clock_gettime, ClockId};

/// A point on `CLOCK_BOOTTIME`, in nanoseconds since boot.
///
/// Arithmetic saturates: adding to the far future stays there, and
/// subtracting past boot stops at boot.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant(u64);

impl BootInstant {
    /// Now, read from `CLOCK_BOOTTIME`.
    pub fn now() -> BootInstant {
        let ts = clock_gettime(ClockId::Boottime);
        let nanos = u64::try_from(ts.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0));
        BootInstant(nanos)
    }

    /// The instant `nanos` nanoseconds after boot (the wire form).
    pub const fn from_nanos(nanos: u64) -> BootInstant {
        BootInstant(nanos)
    }

    /// Nanoseconds since boot (the wire form).
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: BootInstant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// How long from now until `self`; zero if it has passed.
    pub fn remaining(self) -> Duration {
        self.saturating_duration_since(BootInstant::now())
    }

    /// Whether `self` is not in the future any more.
    pub fn has_passed(self) -> bool {
        BootInstant::now() >= self
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Add<Duration> for BootInstant {
    type Output = BootInstant;
    fn add(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_add(nanos(d)))
    }
}

impl Sub<Duration> for BootInstant {
    type Output = BootInstant;
    fn sub(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_sub(nanos(d)))
    }
}

impl Sub<BootInstant> for BootInstant {
    type Output = Duration;
    fn sub(self, earlier: BootInstant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Debug for BootInstant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boot+{:?}", Duration::from_nanos(self.0))
    }
}

impl fmt::Display for BootInstant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_moves_forward_and_agrees_with_monotonic_time() {
        let a = BootInstant::now();
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        let b = BootInstant::now();
        assert!(b - a >= Duration::from_millis(5), "{a:?} -> {b:?}");
        assert!(a.as_nanos() > 0);
    }

    #[test]
    fn arithmetic_saturates() {
        let t = BootInstant::from_nanos(1_000);
        assert_eq!((t + Duration::from_nanos(5)).as_nanos(), 1_005);
        assert_eq!((t - Duration::from_nanos(5)).as_nanos(), 995);
        assert_eq!((t - Duration::from_secs(1)).as_nanos(), 0);
        assert_eq!(
            (BootInstant::from_nanos(u64::MAX) + Duration::from_secs(1)).as_nanos(),
            u64::MAX
        );
        assert_eq!(t - BootInstant::from_nanos(2_000), Duration::ZERO);
        assert_eq!(
            BootInstant::from_nanos(2_000) - t,
            Duration::from_nanos(1_000)
        );
        assert_eq!(
            BootInstant::from_nanos(t.as_nanos()),
            t,
            "the wire form round-trips"
        );
    }

    #[test]
    fn remaining_and_has_passed() {
        let past = BootInstant::now() - Duration::from_millis(1);
        assert!(past.has_passed());
        assert_eq!(past.remaining(), Duration::ZERO);
        let future = BootInstant::now() + Duration::from_secs(60);
        assert!(!future.has_passed());
        assert!(future.remaining() > Duration::from_secs(59));
    }
}
