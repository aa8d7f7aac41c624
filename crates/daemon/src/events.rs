//! The event feed: every state change and monitor decision, numbered, kept
//! in a bounded history, broadcast to followers, and appended to the
//! durable [`journal`](crate::journal) when there is one.

pub use resmon_client::wire::EventRecord;
use resmon_contract::State;
use resmon_task::lock;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::broadcast;

/// How many past events `events` (without `--follow`) can show.
pub const HISTORY: usize = 1000;

/// How far back a repeat is looked for.
const REPEAT_WINDOW: usize = 32;

/// Publishes events to the history and to live followers.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<EventRecord>,
}

struct Inner {
    next: u64,
    history: VecDeque<EventRecord>,
    /// The `seq` of the last event there will be: the monitor stopped.
    last: Option<u64>,
    journal: Option<crate::journal::Sink>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        EventBus {
            inner: Arc::new(Mutex::new(Inner {
                next: 1,
                history: VecDeque::with_capacity(HISTORY),
                last: None,
                journal: None,
            })),
            tx,
        }
    }

    pub fn publish(
        &self,
        kind: &str,
        resource: Option<&str>,
        group: Option<&str>,
        state: Option<State>,
        reason: impl Into<String>,
    ) {
        self.publish_as(draft(kind, resource, group, state, reason.into()), false);
    }

    /// A resource's state change, with its main process's last exit code
    /// when it failed.
    pub fn publish_state(
        &self,
        resource: &str,
        group: &str,
        state: State,
        reason: &str,
        exit_code: Option<i32>,
    ) {
        let mut rec = draft(
            "state",
            Some(resource),
            Some(group),
            Some(state),
            reason.into(),
        );
        rec.exit_code = exit_code;
        self.publish_as(rec, false);
    }

    /// Publishes the last event: followers get it and their stream ends.
    /// Nothing is published after it.
    pub fn finish(&self, reason: impl Into<String>) {
        self.publish_as(draft("monitor", None, None, None, reason.into()), true);
    }

    /// From now on every event also goes to the journal; numbering goes on
    /// after `last`, the journal's last `seq`, so it grows across monitor
    /// restarts.
    pub fn attach_journal(&self, sink: crate::journal::Sink, last: Option<u64>) {
        let mut inner = lock(&self.inner);
        if let Some(last) = last {
            inner.next = inner.next.max(last.saturating_add(1));
        }
        inner.journal = Some(sink);
    }

    /// Stops sending to the journal (its writer then finishes).
    pub fn detach_journal(&self) {
        lock(&self.inner).journal = None;
    }

    /// Events that never reached the journal.
    pub fn journal_dropped(&self) -> u64 {
        lock(&self.inner)
            .journal
            .as_ref()
            .map_or(0, |j| j.dropped())
    }

    /// The `seq` of the last event, once [`finish`](Self::finish) published it.
    pub fn last(&self) -> Option<u64> {
        lock(&self.inner).last
    }

    /// Numbers, times and sends `rec` (a [`draft`]).
    fn publish_as(&self, mut rec: EventRecord, last: bool) {
        let mut inner = lock(&self.inner);
        if inner.last.is_some() {
            return;
        }
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        if rec.kind != "state" && !last {
            let repeat = inner
                .history
                .iter_mut()
                .rev()
                .take(REPEAT_WINDOW)
                .find(|e| {
                    e.kind == rec.kind
                        && e.resource == rec.resource
                        && e.group == rec.group
                        && e.state == rec.state
                        && e.reason == rec.reason
                });
            if let Some(e) = repeat {
                e.count = e.count.saturating_add(1);
                e.last_time = Some(time);
                // Followers (and the journal) hear of it at 2, 4, 8, ...
                // repeats, not each time.
                if e.count.is_power_of_two() {
                    let e = e.clone();
                    if let Some(j) = &inner.journal {
                        j.send(&e);
                    }
                    let _ = self.tx.send(e);
                }
                return;
            }
        }
        rec.seq = inner.next;
        rec.time = time;
        if last {
            inner.last = Some(rec.seq);
        }
        inner.next += 1;
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(rec.clone());
        if let Some(j) = &inner.journal {
            j.send(&rec);
        }
        // Sent under the lock, so followers see events in `seq` order.
        let _ = self.tx.send(rec);
    }

    /// The history so far and a receiver for everything after it, with no
    /// gap and no duplicate between the two.
    pub fn subscribe(&self) -> (Vec<EventRecord>, broadcast::Receiver<EventRecord>) {
        let inner = lock(&self.inner);
        let rx = self.tx.subscribe();
        (inner.history.iter().cloned().collect(), rx)
    }
}

/// An event as published, before it is numbered and timed.
fn draft(
    kind: &str,
    resource: Option<&str>,
    group: Option<&str>,
    state: Option<State>,
    reason: String,
) -> EventRecord {
    EventRecord {
        seq: 0,
        time: String::new(),
        kind: kind.to_string(),
        resource: resource.map(str::to_string),
        group: group.map(str::to_string),
        state,
        reason,
        count: 1,
        last_time: None,
        exit_code: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn repeats_are_counted_not_added() {
        let bus = EventBus::new();
        let (_, mut rx) = bus.subscribe();
        for _ in 0..111 {
            bus.publish("force_kill", Some("r"), Some("g"), None, "killing its tree");
            bus.publish("log", Some("other"), Some("g"), None, "something else");
        }
        bus.publish("state", Some("r"), Some("g"), Some(State::Failed), "x");
        bus.publish("state", Some("r"), Some("g"), Some(State::Failed), "x");
        let (history, _) = bus.subscribe();
        assert_eq!(history.len(), 4, "{history:#?}");
        assert_eq!(history[0].count, 111);
        assert!(history[0].last_time.is_some());
        assert_eq!(history[1].count, 111);
        assert_eq!(history[2].count, 1, "state changes are never folded");
        // A follower heard of the repeats 2, 4, ..., 64 times: 7 updates each.
        let mut heard = 0;
        while let Ok(e) = rx.try_recv() {
            if e.seq == history[0].seq {
                heard += 1;
            }
        }
        assert_eq!(heard, 1 + 6);
        let json = serde_json::to_value(&history[2]).unwrap();
        assert!(json.get("count").is_none(), "{json}");
    }

    #[tokio::test]
    async fn the_last_event_is_the_last() {
        let bus = EventBus::new();
        bus.publish("monitor", None, None, None, "a");
        bus.finish("monitor stopped");
        bus.publish("monitor", None, None, None, "too late");
        let (history, _) = bus.subscribe();
        assert_eq!(history.len(), 2);
        assert_eq!(bus.last(), Some(history[1].seq));
        assert_eq!(history[1].reason, "monitor stopped");
    }

    #[tokio::test]
    async fn history_is_bounded_and_followers_continue_after_it() {
        let bus = EventBus::new();
        for i in 0..HISTORY + 5 {
            bus.publish("monitor", None, None, None, format!("e{i}"));
        }
        let (history, mut rx) = bus.subscribe();
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history[0].seq, 6);
        bus.publish("state", Some("r"), Some("g"), Some(State::Online), "online");
        let next = rx.recv().await.unwrap();
        assert_eq!(next.seq, history.last().unwrap().seq + 1);
        assert_eq!(next.state, Some(State::Online));
    }
}
