//! Integration tests: real processes, real cgroups, one test binary.
//!
//! Every test waits for conditions with a deadline (`eventually`), never a
//! fixed sleep, and kills and removes whatever it started, even on panic.

mod containers;
mod process;
mod util;
