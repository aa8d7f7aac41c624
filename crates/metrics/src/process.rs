//! The monitor process's own CPU, memory and descriptors, read from
//! `/proc/self` at each scrape, under the names every Prometheus process
//! collector uses (`process_cpu_seconds_total`, ...), so that stock
//! dashboards and alerts work on them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Process;

/// What `/proc/self/stat` says, in base units.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    threads: i64,
    /// Seconds after boot.
    started_after_boot: f64,
    virtual_bytes: i64,
    resident_bytes: i64,
}

/// Reads the fields after the command name (which may hold spaces and
/// parentheses, hence the last `)`).
fn parse_stat(text: &str, ticks: f64, page: i64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<i64>().ok();
    Some(Stat {
        cpu_seconds: (num(14)? + num(15)?) as f64 / ticks,
        threads: num(20)?,
        started_after_boot: num(22)? as f64 / ticks,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)?.saturating_mul(page),
    })
}

/// The boot time, in seconds since the Unix epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// How long a count of the open descriptors is shown again: counting
/// lists `/proc/self/fd`, which holds a pidfd per process the monitor
/// watches, and was most of a scrape's cost at a thousand resources.
const FDS_FOR: Duration = Duration::from_secs(10);

fn open_fds() -> Option<usize> {
    static LAST: Mutex<Option<(Instant, usize)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match *last {
        Some((at, n)) if at.elapsed() < FDS_FOR => Some(n),
        _ => {
            let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
            *last = Some((Instant::now(), n));
            Some(n)
        }
    }
}

/// One gauge without labels.
fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), std::fmt::Error> {
    crate::gauges(
        enc,
        name,
        help,
        unit,
        std::iter::once(([("", ""); 0], value)),
    )
}

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = i64::try_from(rustix::param::page_size()).unwrap_or(4096);
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t, ticks, page));
        if let Some(s) = stat {
            ConstCounter::new(s.cpu_seconds).encode(enc.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent by the monitor, in seconds.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
            gauge(
                &mut enc,
                "process_resident_memory",
                "Resident memory of the monitor",
                Some(&Unit::Bytes),
                s.resident_bytes,
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory",
                "Virtual memory of the monitor",
                Some(&Unit::Bytes),
                s.virtual_bytes,
            )?;
            gauge(
                &mut enc,
                "process_threads",
                "Threads of the monitor",
                None,
                s.threads,
            )?;
            if let Some(boot) = boot_time() {
                gauge(
                    &mut enc,
                    "process_start_time",
                    "When the monitor started, in seconds since the Unix epoch",
                    Some(&Unit::Seconds),
                    boot + s.started_after_boot,
                )?;
            }
        }
        if let Some(n) = open_fds() {
            gauge(
                &mut enc,
                "process_open_fds",
                "Open file descriptors of the monitor (counted at most every 10 s)",
                None,
                n,
            )?;
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(max) = limit.current {
            gauge(
                &mut enc,
                "process_max_fds",
                "The monitor's limit of open file descriptors",
                None,
                max,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 \
                    8192000 300 18446744073709551615";
        let s = parse_stat(line, 100.0, 4096).unwrap();
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 3.0,
                threads: 7,
                started_after_boot: 10.0,
                virtual_bytes: 8_192_000,
                resident_bytes: 300 * 4096,
            }
        );
        assert_eq!(parse_stat("42 (x) S 1", 100.0, 4096), None);
    }
}
