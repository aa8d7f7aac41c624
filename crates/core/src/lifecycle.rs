//! Lifecycle rules around the entry points: where a resource is in its
//! type's hands ([`Life`]), and what becomes at the monitor's start of each
//! resource that an earlier run of the monitor may have left running.

/// Where a resource is in its type's hands. Entry points are called only
/// while it is [`Open`](Life::Open); the steps between are the core's
/// [`Action::Open`](crate::Action::Open), [`Action::Reattach`](crate::Action::Reattach)
/// and [`Action::Close`](crate::Action::Close), carried out off the event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Not opened, or its open failed: the next start of it opens it first.
    Closed,
    /// Its `open` is running.
    Opening,
    /// Opened at the monitor's start; what the earlier run left of it is
    /// being found again.
    Reattaching,
    /// Opened: entry points may be called.
    Open,
    /// Its `close` is running: to be opened again with a new config, or
    /// released for good.
    Closing,
    /// Removed by a reload, closed, and its container gone.
    Released,
}

impl Life {
    pub fn as_str(self) -> &'static str {
        match self {
            Life::Closed => "closed",
            Life::Opening => "opening",
            Life::Reattaching => "reattaching",
            Life::Open => "open",
            Life::Closing => "closing",
            Life::Released => "released",
        }
    }

    /// Whether an open, reattach or close of it is out.
    pub fn is_busy(self) -> bool {
        matches!(self, Life::Opening | Life::Reattaching | Life::Closing)
    }
}

/// What the earlier run saved of a resource whose type and parameters are
/// the same now (a changed one is a new resource).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Earlier {
    /// An operator's online or autostart wanted it online.
    pub wanted_online: bool,
    /// It was `online` when the state was saved.
    pub was_online: bool,
    /// Its type saved what it needs to find it running again.
    pub can_reattach: bool,
}

/// How a resource starts when the monitor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The earlier run left it running: find it and watch it again.
    Reattach,
    /// It was online but nothing says how to find it: its processes died
    /// while no monitor watched, which is a failure.
    Lost,
    /// Bring it online.
    Online,
    /// Leave it offline.
    Offline,
}

/// The start decision. In cluster mode nothing of an earlier run is kept:
/// a node runs a group only once it took it in etcd. Otherwise what was
/// wanted before is what comes back; a resource the earlier run did not
/// know (or knew with another type or parameters) starts if `autostart`.
pub fn start_from(earlier: Option<Earlier>, autostart: bool, cluster: bool) -> StartFrom {
    match earlier {
        _ if cluster => StartFrom::Offline,
        Some(e) if e.wanted_online && e.can_reattach => StartFrom::Reattach,
        Some(e) if e.wanted_online && e.was_online => StartFrom::Lost,
        Some(e) if e.wanted_online => StartFrom::Online,
        Some(_) => StartFrom::Offline,
        None if autostart => StartFrom::Online,
        None => StartFrom::Offline,
    }
}

/// When the monitor writes its state: one write at a time, `settle` after
/// the state first changed since the last write began (a crash and its
/// restart make one write, not three, and the fsync stays off the
/// restart's way), and none while the monitor stops (the last one is
/// written at the very end, with what was wanted before the stop).
#[derive(Clone, Debug)]
pub struct SaveSchedule {
    settle: std::time::Duration,
    dirty_since: Option<tokio::time::Instant>,
    writing: bool,
}

impl SaveSchedule {
    pub fn new(settle: std::time::Duration) -> SaveSchedule {
        SaveSchedule {
            settle,
            dirty_since: None,
            writing: false,
        }
    }

    /// The state changed at `now`.
    pub fn changed(&mut self, now: tokio::time::Instant) {
        self.dirty_since.get_or_insert(now);
    }

    /// A write started outside the schedule (the one at a stop).
    pub fn started(&mut self) {
        self.writing = true;
        self.dirty_since = None;
    }

    /// The write in flight ended.
    pub fn finished(&mut self) {
        self.writing = false;
    }

    /// Whether to start a write at `now`; if so it counts as started.
    pub fn due(&mut self, now: tokio::time::Instant, stopping: bool) -> bool {
        let due = self.wake_at(stopping).is_some_and(|t| t <= now);
        if due {
            self.started();
        }
        due
    }

    /// When the loop must wake up to start the next write: not while one
    /// is in flight (its end wakes the loop), nor while stopping.
    pub fn wake_at(&self, stopping: bool) -> Option<tokio::time::Instant> {
        let at = crate::later(self.dirty_since?, self.settle);
        (!self.writing && !stopping).then_some(at)
    }
}
