//! How long this node may keep running its groups: the lease deadline, as a
//! pure state machine with no I/O (time is an input).
//!
//! etcd restarts a lease's TTL when it *processes* a renewal, which is
//! after the node *sent* it. So a renewal sent at `s` and answered with TTL
//! `t` proves the lease lives at least until `s + t` on etcd's clock; the
//! node keeps a `margin` for the time its terminate takes and for clock
//! drift, and may run until `s + t - margin`, measured on `CLOCK_BOOTTIME`
//! ([`BootInstant`]). Only *acknowledged* renewals count: one sent and never
//! answered proves nothing. Acknowledgements may come out of order (a
//! renewal on a broken stream, then one on a new stream); the deadline is
//! the latest any acknowledged renewal proves, and it never moves back,
//! except to nothing when the lease is lost.
//!
//! The lease is lost explicitly when etcd answers a renewal with TTL 0 (or
//! less): it expired or was revoked. [`LeaseClock::lose`] records other
//! explicit losses (the node key deleted). A lost clock stays lost.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clock::BootInstant;

/// At most this many unanswered renewals are remembered; older ones are
/// forgotten (their answers would prove less than newer ones').
const MAX_PENDING: usize = 64;

/// Names one renewal sent with [`LeaseClock::sent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RenewalId(u64);

/// What an acknowledgement changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// The deadline moved later, to this.
    Extended(BootInstant),
    /// The deadline stays (an older renewal's answer, or an unknown one).
    Unchanged,
    /// The answer said the lease is gone.
    Lost,
}

/// The renewals of one lease and the deadline they prove.
#[derive(Clone, Debug)]
pub struct LeaseClock {
    margin: Duration,
    next: u64,
    /// Renewals sent and not answered yet: id -> send time.
    pending: BTreeMap<u64, BootInstant>,
    until: Option<BootInstant>,
    lost: Option<String>,
}

impl LeaseClock {
    /// A clock for a lease with no renewal acknowledged yet (count the
    /// grant as the first renewal: `sent` before asking, `acked` with the
    /// granted TTL).
    pub fn new(margin: Duration) -> LeaseClock {
        LeaseClock {
            margin,
            next: 0,
            pending: BTreeMap::new(),
            until: None,
            lost: None,
        }
    }

    /// Records a renewal sent at `at` (read the clock *before* sending).
    pub fn sent(&mut self, at: BootInstant) -> RenewalId {
        let id = self.next;
        self.next += 1;
        if self.lost.is_none() {
            self.pending.insert(id, at);
            while self.pending.len() > MAX_PENDING {
                self.pending.pop_first();
            }
        }
        RenewalId(id)
    }

    /// Records etcd's answer to renewal `id`: the lease's TTL in seconds,
    /// as etcd reports it (`<= 0`: the lease is gone).
    pub fn acked(&mut self, id: RenewalId, granted_ttl_secs: i64) -> Ack {
        if self.lost.is_some() {
            return Ack::Unchanged;
        }
        let Some(sent) = self.pending.remove(&id.0) else {
            return Ack::Unchanged;
        };
        let Ok(ttl) = u64::try_from(granted_ttl_secs) else {
            self.lose("etcd answered a renewal with a negative TTL: the lease is gone");
            return Ack::Lost;
        };
        if ttl == 0 {
            self.lose("etcd answered a renewal with TTL 0: the lease expired or was revoked");
            return Ack::Lost;
        }
        // Renewals sent before this one prove no more than it does.
        self.pending.retain(|&k, _| k > id.0);
        let candidate = sent + Duration::from_secs(ttl) - self.margin;
        match self.until {
            Some(until) if until >= candidate => Ack::Unchanged,
            _ => {
                self.until = Some(candidate);
                Ack::Extended(candidate)
            }
        }
    }

    /// Forgets renewals that will never be answered (their stream broke).
    pub fn abandon_pending(&mut self) {
        self.pending.clear();
    }

    /// Records an explicit loss; the first reason is kept.
    pub fn lose(&mut self, reason: impl Into<String>) {
        if self.lost.is_none() {
            self.lost = Some(reason.into());
        }
        self.until = None;
        self.pending.clear();
    }

    /// The latest point on `CLOCK_BOOTTIME` the acknowledged renewals let
    /// this node run its groups; `None` before the first acknowledgement
    /// and once the lease is lost.
    pub fn may_run_until(&self) -> Option<BootInstant> {
        self.until
    }

    /// Why the lease is lost, if it is.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// Whether the node must not run its groups at `now`: lost, never
    /// acknowledged, or past the deadline.
    pub fn expired(&self, now: BootInstant) -> bool {
        self.until.is_none_or(|until| now >= until)
    }

    /// How many renewals wait for an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The send time of the oldest renewal still waiting for an answer.
    pub fn oldest_pending(&self) -> Option<BootInstant> {
        self.pending.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MARGIN: Duration = Duration::from_millis(500);

    fn at(ms: u64) -> BootInstant {
        BootInstant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn the_deadline_is_the_send_time_of_the_last_ack_plus_ttl_minus_margin() {
        let mut c = LeaseClock::new(MARGIN);
        assert_eq!(c.may_run_until(), None);
        assert!(c.expired(at(0)));
        let grant = c.sent(at(1_000));
        // Answered much later: the deadline still counts from the send.
        assert_eq!(c.acked(grant, 3), Ack::Extended(at(3_500)));
        assert_eq!(c.may_run_until(), Some(at(3_500)));
        assert!(!c.expired(at(3_499)));
        assert!(c.expired(at(3_500)));
        let r = c.sent(at(2_000));
        // Sent but not answered: nothing changes.
        assert_eq!(c.may_run_until(), Some(at(3_500)));
        assert_eq!(c.pending(), 1);
        assert_eq!(c.oldest_pending(), Some(at(2_000)));
        assert_eq!(c.acked(r, 3), Ack::Extended(at(4_500)));
        assert_eq!(c.pending(), 0);
        // An answer for a renewal answered already, or never sent, is ignored.
        assert_eq!(c.acked(r, 3), Ack::Unchanged);
        assert_eq!(c.acked(RenewalId(99), 3), Ack::Unchanged);
        assert_eq!(c.lost(), None);
    }

    #[test]
    fn out_of_order_acks_keep_the_latest_deadline() {
        let mut c = LeaseClock::new(MARGIN);
        let a = c.sent(at(1_000));
        let b = c.sent(at(2_000));
        assert_eq!(c.acked(b, 3), Ack::Extended(at(4_500)));
        // The older one, answered after: proves less, and was forgotten.
        assert_eq!(c.acked(a, 3), Ack::Unchanged);
        assert_eq!(c.may_run_until(), Some(at(4_500)));

        let mut c = LeaseClock::new(MARGIN);
        let a = c.sent(at(1_000));
        let b = c.sent(at(2_000));
        assert_eq!(c.acked(a, 3), Ack::Extended(at(3_500)));
        assert_eq!(c.acked(b, 3), Ack::Extended(at(4_500)));
    }

    #[test]
    fn ttl_zero_or_negative_means_the_lease_is_gone() {
        for ttl in [0, -1] {
            let mut c = LeaseClock::new(MARGIN);
            let a = c.sent(at(1_000));
            c.acked(a, 3);
            let b = c.sent(at(2_000));
            assert_eq!(c.acked(b, ttl), Ack::Lost);
            assert_eq!(c.may_run_until(), None);
            assert!(c.lost().unwrap().contains("lease"), "{:?}", c.lost());
            assert!(c.expired(at(0)));
            // Lost stays lost.
            let d = c.sent(at(3_000));
            assert_eq!(c.acked(d, 3), Ack::Unchanged);
            assert_eq!(c.may_run_until(), None);
        }
    }

    #[test]
    fn an_explicit_loss_keeps_its_first_reason() {
        let mut c = LeaseClock::new(MARGIN);
        let a = c.sent(at(1_000));
        c.acked(a, 3);
        c.lose("node key deleted");
        c.lose("something else");
        assert_eq!(c.lost(), Some("node key deleted"));
        assert_eq!(c.may_run_until(), None);
    }

    #[test]
    fn abandoned_renewals_prove_nothing() {
        let mut c = LeaseClock::new(MARGIN);
        let a = c.sent(at(1_000));
        c.abandon_pending();
        assert_eq!(c.acked(a, 3), Ack::Unchanged);
        assert_eq!(c.may_run_until(), None);
    }

    #[test]
    fn unanswered_renewals_are_bounded() {
        let mut c = LeaseClock::new(MARGIN);
        let first = c.sent(at(0));
        for i in 1..1_000 {
            c.sent(at(i));
        }
        assert_eq!(c.pending(), MAX_PENDING);
        assert_eq!(c.acked(first, 3), Ack::Unchanged, "forgotten");
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Send a renewal `d` ms after the previous send.
        Send(u64),
        /// Answer the renewal at this index (modulo the number sent).
        Ack(usize, i64),
        Abandon,
        Lose,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..2_000u64).prop_map(Op::Send),
            4 => (any::<usize>(), prop_oneof![9 => 1..6i64, 1 => -1..1i64])
                .prop_map(|(i, t)| Op::Ack(i, t)),
            1 => Just(Op::Abandon),
            1 => Just(Op::Lose),
        ]
    }

    proptest! {
        /// The deadline never exceeds what some acknowledged renewal
        /// proves (send + TTL - margin), is exactly the latest of those
        /// while the TTL does not change, and never moves backwards except
        /// to nothing on loss.
        #[test]
        fn the_deadline_is_proven_and_never_moves_back(ops in prop::collection::vec(op(), 1..200), fixed_ttl in any::<bool>()) {
            let mut c = LeaseClock::new(MARGIN);
            let mut now = 10_000u64;
            let mut sent: Vec<(RenewalId, BootInstant)> = Vec::new();
            // The deadlines the acknowledgements so far prove.
            let mut proven: Vec<BootInstant> = Vec::new();
            let mut before = None;
            let mut lost = false;
            for op in ops {
                match op {
                    Op::Send(d) => {
                        now += d;
                        sent.push((c.sent(at(now)), at(now)));
                    }
                    Op::Ack(i, ttl) => {
                        if sent.is_empty() { continue; }
                        let ttl = if fixed_ttl && ttl > 0 { 3 } else { ttl };
                        let (id, s) = sent[i % sent.len()];
                        let pending_before = c.pending.contains_key(&id.0);
                        let ack = c.acked(id, ttl);
                        if lost {
                            prop_assert_eq!(ack, Ack::Unchanged);
                        } else if pending_before && ttl <= 0 {
                            prop_assert_eq!(ack, Ack::Lost);
                            lost = true;
                        } else if pending_before {
                            proven.push(s + Duration::from_secs(ttl as u64) - MARGIN);
                        }
                    }
                    Op::Abandon => c.abandon_pending(),
                    Op::Lose => {
                        c.lose("test");
                        lost = true;
                    }
                }
                let until = c.may_run_until();
                if lost {
                    prop_assert_eq!(until, None);
                    prop_assert!(c.lost().is_some());
                    continue;
                }
                let best = proven.iter().max().copied();
                match until {
                    None => prop_assert!(proven.is_empty()),
                    Some(u) => {
                        prop_assert!(Some(u) <= best, "{u:?} beyond every proof {best:?}");
                        prop_assert!(proven.contains(&u), "{u:?} is no acknowledged renewal's");
                        if fixed_ttl {
                            prop_assert_eq!(Some(u), best);
                        }
                    }
                }
                if let (Some(b), Some(u)) = (before, until) {
                    prop_assert!(u >= b, "moved back from {b:?} to {u:?}");
                }
                prop_assert!(!(before.is_some() && until.is_none()), "vanished without a loss");
                before = until;
            }
        }
    }
}
