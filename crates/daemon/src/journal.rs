//! The durable event journal: every event the [`EventBus`](crate::events)
//! publishes is appended to `events.log` in the state directory (see
//! `resmon-journal` for the format, the torn-record rule and rotation), so
//! `resmon events` reads history across monitor restarts.
//!
//! The event loop never waits for the disk: events go through a bounded
//! queue to a thread of their own, which writes them and makes them
//! durable at most a second later. When the queue is full or the disk
//! fails, events are counted as dropped (status, metrics, and an event
//! once it works again) instead of blocking or growing without bound.

use crate::events::EventRecord;
use rustix::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The journal's name in the state directory.
pub const NAME: &str = "events";

/// How many events may wait for the writer.
const QUEUE: usize = 4096;

/// How long a written event may wait to be made durable.
const SYNC_EVERY: Duration = Duration::from_secs(1);

pub use resmon_journal::Options;

/// Where the bus sends what it publishes.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Queues one record; never waits.
    pub fn send(&self, rec: &EventRecord) {
        let Ok(line) = serde_json::to_vec(rec) else {
            return;
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events that never reached the journal.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The journal writer's thread; joining it waits until everything queued
/// is written and durable.
pub struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl WriterThread {
    /// Waits (at most `limit`) for the queued events to be written.
    pub fn finish(mut self, limit: Duration) {
        let Some(t) = self.0.take() else { return };
        let end = std::time::Instant::now() + limit;
        while !t.is_finished() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!("the event journal did not finish writing within {limit:?}");
        }
    }
}

/// Opens the journal in `dir` and starts its writer. Returns the sink for
/// the bus, the thread, and the `seq` of the journal's last event (the bus
/// numbers on from there, so `seq` grows across monitor restarts).
pub fn start(
    dir: &OwnedFd,
    options: Options,
) -> std::io::Result<(Sink, WriterThread, Option<u64>)> {
    let last = resmon_journal::last(dir.as_fd(), NAME)
        .ok()
        .flatten()
        .and_then(|r| serde_json::from_slice::<EventRecord>(&r).ok())
        .map(|e| e.seq);
    let writer = resmon_journal::Writer::open(dir.as_fd(), NAME, options)?;
    let (tx, rx) = sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let sink = Sink {
        tx,
        dropped: dropped.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("resmon-journal".into())
        .spawn(move || write(writer, rx, dropped))?;
    Ok((sink, WriterThread(Some(thread)), last))
}

/// The writer's loop: append what comes, sync once a second while there
/// is something to sync, and finish when the sink is gone.
fn write(mut w: resmon_journal::Writer, rx: Receiver<Vec<u8>>, dropped: Arc<AtomicU64>) {
    let mut unsynced = false;
    let mut failing: Option<String> = None;
    let mut last_sync = std::time::Instant::now();
    loop {
        let next = match rx.recv_timeout(SYNC_EVERY) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let idle = next.is_none();
        if let Some(line) = next {
            match w.append(&line) {
                Ok(()) => {
                    unsynced = true;
                    if let Some(why) = failing.take() {
                        tracing::info!("the event journal is written again (it failed: {why})");
                    }
                }
                Err(e) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    if failing.is_none() {
                        tracing::warn!("cannot write the event journal: {e}; events are counted as dropped until it works again");
                    }
                    failing = Some(e.to_string());
                }
            }
        }
        if unsynced && (idle || last_sync.elapsed() >= SYNC_EVERY) {
            let _ = w.sync();
            unsynced = false;
            last_sync = std::time::Instant::now();
        }
    }
    if unsynced {
        let _ = w.sync();
    }
}

/// What `GET /v1/events` asks of the history.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
    /// Only events of this resource.
    pub resource: Option<String>,
    /// At most this many, the newest.
    pub limit: usize,
}

impl Filter {
    pub fn admits(&self, e: &EventRecord) -> bool {
        if let Some(r) = &self.resource {
            if e.resource.as_deref() != Some(r.as_str()) {
                return false;
            }
        }
        match self.since {
            None => true,
            // The last repeat counts: a repeated event is still happening.
            Some(since) => humantime::parse_rfc3339(e.last_time.as_deref().unwrap_or(&e.time))
                .is_ok_and(|t| t >= since),
        }
    }
}

/// Where `GET /v1/events` reads the journal.
#[derive(Clone)]
pub struct Reader {
    dir: Arc<OwnedFd>,
}

impl Reader {
    pub fn new(dir: &OwnedFd) -> std::io::Result<Reader> {
        Ok(Reader {
            dir: Arc::new(rustix::io::fcntl_dupfd_cloexec(dir, 0)?),
        })
    }

    /// The journal's events that `filter` admits, oldest first, newest
    /// files first until `limit` are found (files last written before
    /// `since` are not read at all). Damaged records are skipped and
    /// counted.
    pub fn read(&self, filter: &Filter) -> (Vec<EventRecord>, usize) {
        let dir = self.dir.as_fd();
        let Ok(files) = resmon_journal::files(dir, NAME) else {
            return (Vec::new(), 0);
        };
        let mut chunks: Vec<Vec<EventRecord>> = Vec::new();
        let (mut found, mut damaged) = (0, 0);
        for n in files.into_iter().rev() {
            let file = resmon_journal::file_name(NAME, n);
            if let Some(since) = filter.since {
                let written = rustix::fs::statat(dir, &file, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .map(|s| {
                        SystemTime::UNIX_EPOCH
                            + Duration::new(s.st_mtime.max(0) as u64, s.st_mtime_nsec as u32)
                    });
                if written.is_some_and(|w| w < since) {
                    break;
                }
            }
            let Ok(scan) = resmon_journal::read_file(dir, &file) else {
                continue;
            };
            damaged += scan.damaged;
            let mut events = Vec::with_capacity(scan.records.len());
            for r in scan.records {
                match serde_json::from_slice::<EventRecord>(&r) {
                    Ok(e) if filter.admits(&e) => events.push(e),
                    Ok(_) => {}
                    Err(_) => damaged += 1,
                }
            }
            found += events.len();
            chunks.push(events);
            if found >= filter.limit {
                break;
            }
        }
        let mut all: Vec<EventRecord> = chunks.into_iter().rev().flatten().collect();
        merge_repeats(&mut all);
        let skip = all.len().saturating_sub(filter.limit);
        all.drain(..skip);
        (all, damaged)
    }
}

/// A repeated event is journaled again at each power-of-two count, with
/// its first `seq`: the last one written stands for it, at its place.
fn merge_repeats(events: &mut Vec<EventRecord>) {
    let mut at: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut out: Vec<EventRecord> = Vec::with_capacity(events.len());
    for e in events.drain(..) {
        match at.get(&e.seq) {
            Some(&i) if out[i].time == e.time => out[i] = e,
            _ => {
                at.insert(e.seq, out.len());
                out.push(e);
            }
        }
    }
    *events = out;
}

/// The journal's history joined with the bus's own (newer, and with the
/// latest repeat counts): one record per `seq`, in order.
pub fn join(
    mut journal: Vec<EventRecord>,
    memory: Vec<EventRecord>,
    filter: &Filter,
) -> Vec<EventRecord> {
    let first = memory.first().map_or(u64::MAX, |e| e.seq);
    journal.retain(|e| e.seq < first);
    journal.extend(memory.into_iter().filter(|e| filter.admits(e)));
    let skip = journal.len().saturating_sub(filter.limit);
    journal.drain(..skip);
    journal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, time: &str, resource: &str, count: u64) -> EventRecord {
        EventRecord {
            seq,
            time: time.into(),
            kind: "log".into(),
            resource: Some(resource.into()),
            group: None,
            state: None,
            reason: format!("e{seq}"),
            count,
            last_time: (count > 1).then(|| "2026-12-07T10:05:00Z".into()),
            exit_code: None,
        }
    }

    #[test]
    fn repeats_fold_into_their_first_place_and_memory_wins() {
        let t = "2026-12-07T10:00:00Z";
        let mut j = vec![
            ev(1, t, "a", 1),
            ev(2, t, "b", 1),
            ev(1, t, "a", 2),
            ev(1, t, "a", 4),
        ];
        merge_repeats(&mut j);
        assert_eq!(
            j.iter().map(|e| (e.seq, e.count)).collect::<Vec<_>>(),
            [(1, 4), (2, 1)]
        );
        // The same seq at another time is another run's event: both stay.
        let mut j = vec![ev(1, t, "a", 1), ev(1, "2026-12-07T11:00:00Z", "a", 1)];
        merge_repeats(&mut j);
        assert_eq!(j.len(), 2);
        // Memory holds the newest events with their latest counts.
        let all = |limit| Filter {
            limit,
            ..Default::default()
        };
        let joined = join(
            vec![ev(1, t, "a", 1), ev(2, t, "b", 1), ev(3, t, "a", 1)],
            vec![ev(3, t, "a", 8), ev(4, t, "b", 1)],
            &all(10),
        );
        assert_eq!(
            joined.iter().map(|e| (e.seq, e.count)).collect::<Vec<_>>(),
            [(1, 1), (2, 1), (3, 8), (4, 1)]
        );
        let newest = join(vec![ev(1, t, "a", 1)], vec![ev(2, t, "b", 1)], &all(1));
        assert_eq!(newest[0].seq, 2, "the limit keeps the newest");
    }

    #[test]
    fn the_filter_takes_a_resource_and_a_time() {
        let f = Filter {
            since: humantime::parse_rfc3339("2026-12-07T10:01:00Z").ok(),
            resource: Some("a".into()),
            limit: 10,
        };
        assert!(!f.admits(&ev(1, "2026-12-07T10:00:00Z", "a", 1)));
        assert!(f.admits(&ev(1, "2026-12-07T10:02:00Z", "a", 1)));
        assert!(!f.admits(&ev(1, "2026-12-07T10:02:00Z", "b", 1)));
        // Still repeating after `since`: it is shown.
        assert!(f.admits(&ev(1, "2026-12-07T10:00:00Z", "a", 2)));
    }
}
