//! The monitor's worker threads: where everything that may block runs
//! (entry points, `open`, `close`, a terminate that waits).
//!
//! Unlike tokio's blocking pool, which panics when it needs a thread and
//! the system gives none (pids exhausted, a `pids.max` on the monitor's
//! cgroup), this pool never depends on a new thread for progress: one
//! worker is started with the monitor and never exits, so work that finds
//! no idle worker and no thread to be had is queued, reported, and run as
//! soon as a worker is free. Workers beyond that one are started on demand
//! (up to [`MAX_WORKERS`]) and leave after [`KEEP_ALIVE`] idle.

use resmon_task::lock;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// At most this many workers at once.
pub const MAX_WORKERS: usize = 512;
/// A worker idle this long leaves (but the first one).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
    /// When a worker could not be started last reported.
    reported: Option<Instant>,
}

/// The pool, or why its first worker could not be made.
static POOL: OnceLock<Result<&'static Pool, (std::io::ErrorKind, String)>> = OnceLock::new();

/// Starts the pool with its permanent worker. Call it once at start; an
/// error means not even one thread could be made.
pub fn start() -> Result<(), NoThread> {
    pool()
        .map(|_| ())
        .map_err(|(kind, why)| NoThread(std::io::Error::new(kind, why)))
}

/// Not even one worker thread could be made at start.
#[derive(Debug, thiserror::Error)]
#[error("starting the monitor's first worker thread: {0}")]
pub struct NoThread(#[source] std::io::Error);

fn pool() -> Result<&'static Pool, (std::io::ErrorKind, String)> {
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }));
        lock(&pool.state).threads = 1;
        std::thread::Builder::new()
            .name("resmon-worker".into())
            .spawn(move || work(pool, true))
            .map(|_| pool)
            .map_err(|e| (e.kind(), e.to_string()))
    })
    .clone()
}

fn work(pool: &'static Pool, permanent: bool) {
    let mut state = lock(&pool.state);
    loop {
        if let Some(job) = state.jobs.pop_front() {
            drop(state);
            job();
            state = lock(&pool.state);
            continue;
        }
        state.idle += 1;
        let (next, waited) = pool
            .wake
            .wait_timeout_while(state, KEEP_ALIVE, |s| s.jobs.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        state = next;
        state.idle -= 1;
        if waited.timed_out() && state.jobs.is_empty() && !permanent {
            state.threads -= 1;
            return;
        }
    }
}

fn submit(job: Job) {
    let pool = match pool() {
        Ok(p) => p,
        // No worker at all (the first could not be made): run it here
        // rather than never.
        Err(_) => return job(),
    };
    let mut state = lock(&pool.state);
    state.jobs.push_back(job);
    if state.idle >= state.jobs.len() {
        pool.wake.notify_one();
        return;
    }
    if state.threads >= MAX_WORKERS {
        return; // queued: a worker takes it when it is free
    }
    state.threads += 1;
    drop(state);
    let started = std::thread::Builder::new()
        .name("resmon-worker".into())
        .spawn(move || work(pool, false));
    if let Err(e) = started {
        let mut state = lock(&pool.state);
        state.threads -= 1;
        let now = Instant::now();
        if state
            .reported
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            state.reported = Some(now);
            tracing::warn!(
                "cannot start a worker thread ({e}): {} call(s) wait for one of the {} running",
                state.jobs.len(),
                state.threads
            );
        }
    }
}

/// Runs `f` on a worker; await the handle for its result.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Handle<T> {
    let (tx, rx) = oneshot::channel();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    // The job runs in the caller's runtime context, as on tokio's pool.
    let runtime = tokio::runtime::Handle::try_current().ok();
    submit(Box::new(move || {
        let _runtime = runtime.as_ref().map(|h| h.enter());
        let out = std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(crate::driver::panic_text);
        // Finished before the result is there: whoever sees the result
        // also sees `is_finished`.
        finished.store(true, std::sync::atomic::Ordering::Release);
        let _ = tx.send(out);
    }));
    Handle { rx: Some(rx), done }
}

/// The result of a job: `Err` with its panic message if it panicked.
pub struct Handle<T> {
    /// `None` once the result was taken.
    rx: Option<oneshot::Receiver<Result<T, String>>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<T> Handle<T> {
    /// Whether the job has finished (its result is ready).
    pub fn is_finished(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl<T> Future for Handle<T> {
    type Output = Result<T, String>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(Err("its result was taken already".into()));
        };
        let out = std::task::ready!(Pin::new(rx).poll(cx))
            .unwrap_or_else(|_| Err("the worker ended without an answer".into()));
        self.rx = None;
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_their_panics_are_caught_and_the_pool_goes_on() {
        start().unwrap();
        assert_eq!(spawn(|| 2 + 2).await, Ok(4));
        let e = spawn(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert_eq!(e, "boom");
        // Many at once, each blocking: they run side by side.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let all: Vec<_> = (0..8)
            .map(|i| {
                let b = barrier.clone();
                spawn(move || {
                    b.wait();
                    i
                })
            })
            .collect();
        for (i, h) in all.into_iter().enumerate() {
            assert_eq!(h.await, Ok(i));
        }
        // Jobs may use the monitor's runtime.
        assert!(spawn(|| tokio::runtime::Handle::try_current().is_ok())
            .await
            .unwrap());
    }
}
