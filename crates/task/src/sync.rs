//! Locking that survives a panic elsewhere.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex, ignoring poisoning. The monitor must keep serving after a
/// panic was caught in some thread, and every critical section of resmon
/// leaves its data consistent even if a panic interrupts it, so a poisoned
/// lock holds nothing worse than a lock that was never poisoned.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
