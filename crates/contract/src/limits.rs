//! Resource limits (`memory_max`, `memory_high`, `cpu_max`, `cpu_weight`,
//! `pids_max`, `io_weight`): what a config asks of a resource's cgroup v2,
//! checked when the config is read, and the cgroup files that carry them.

/// The limits of one resource; `None` is no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max`, bytes: past it the kernel's OOM killer acts.
    pub memory_max: Option<u64>,
    /// `memory.high`, bytes: past it the resource is throttled and reclaimed.
    pub memory_high: Option<u64>,
    /// `cpu.max`: CPU time per period, in percent of one CPU (`200` is two).
    pub cpu_max: Option<u32>,
    /// `cpu.weight`, 1 to 10000 (100 is the kernel's default).
    pub cpu_weight: Option<u32>,
    /// `pids.max`: the most processes and threads at once.
    pub pids_max: Option<u64>,
    /// `io.weight`, 1 to 10000 (100 is the kernel's default).
    pub io_weight: Option<u32>,
}

/// The keys of a `[[resource]]` table (and of `[defaults]`) that set limits.
pub const LIMIT_KEYS: &[&str] = &[
    "memory_max",
    "memory_high",
    "cpu_max",
    "cpu_weight",
    "pids_max",
    "io_weight",
];

/// The period `cpu.max` is written with, in microseconds.
const CPU_PERIOD: u64 = 100_000;

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The cgroup v2 controllers these limits need, each once.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut need = |on: bool, c: &'static str| {
            if on && !out.contains(&c) {
                out.push(c);
            }
        };
        need(
            self.memory_max.is_some() || self.memory_high.is_some(),
            "memory",
        );
        need(self.cpu_max.is_some() || self.cpu_weight.is_some(), "cpu");
        need(self.pids_max.is_some(), "pids");
        need(self.io_weight.is_some(), "io");
        out
    }

    /// Every cgroup file these limits concern, with the value to write: a
    /// limit that is not set gets the kernel's "no limit" value, so that a
    /// reload that removes a limit lifts it. With the controller each needs.
    pub fn files(&self) -> Vec<(&'static str, &'static str, String)> {
        let bytes = |v: Option<u64>| v.map_or("max".to_string(), |n| n.to_string());
        vec![
            ("memory", "memory.max", bytes(self.memory_max)),
            ("memory", "memory.high", bytes(self.memory_high)),
            (
                "cpu",
                "cpu.max",
                match self.cpu_max {
                    Some(pct) => format!("{} {CPU_PERIOD}", u64::from(pct) * CPU_PERIOD / 100),
                    None => format!("max {CPU_PERIOD}"),
                },
            ),
            (
                "cpu",
                "cpu.weight",
                self.cpu_weight.unwrap_or(100).to_string(),
            ),
            ("pids", "pids.max", bytes(self.pids_max)),
            (
                "io",
                "io.weight",
                format!("default {}", self.io_weight.unwrap_or(100)),
            ),
        ]
    }

    /// Sets the limit `key` (one of [`LIMIT_KEYS`]) from a config value:
    /// sizes as `"512MiB"` (or bytes), `cpu_max` as `"50%"`, the rest as
    /// whole numbers. The error says what is wrong and what to write.
    pub fn set(&mut self, key: &str, value: &LimitValue) -> Result<(), String> {
        let whole = |lo: u64, hi: u64| match value {
            LimitValue::Int(n) if (lo as i64..=hi as i64).contains(n) => Ok(*n as u64),
            _ => Err(format!("{key}: must be a whole number from {lo} to {hi}")),
        };
        match key {
            "memory_max" | "memory_high" => {
                let n = match value {
                    LimitValue::Text(t) => {
                        crate::parse_size(t).map_err(|e| format!("{key}: {e}"))?
                    }
                    LimitValue::Int(n) if *n > 0 => *n as u64,
                    _ => return Err(format!("{key}: write a size, e.g. {key} = \"512MiB\"")),
                };
                if key == "memory_max" {
                    self.memory_max = Some(n);
                } else {
                    self.memory_high = Some(n);
                }
            }
            "cpu_max" => {
                let pct = match value {
                    LimitValue::Text(t) => t
                        .trim()
                        .strip_suffix('%')
                        .and_then(|n| n.trim().parse::<u32>().ok())
                        .filter(|n| (1..=100_000).contains(n)),
                    LimitValue::Int(_) => None,
                };
                self.cpu_max = Some(pct.ok_or_else(|| {
                    format!("{key}: write a share of one CPU from \"1%\" to \"100000%\", e.g. \"50%\" or \"200%\" (two CPUs)")
                })?);
            }
            "cpu_weight" => self.cpu_weight = Some(whole(1, 10_000)? as u32),
            "io_weight" => self.io_weight = Some(whole(1, 10_000)? as u32),
            "pids_max" => self.pids_max = Some(whole(1, 4_194_304)?),
            other => return Err(format!("{other}: not a limit")),
        }
        Ok(())
    }
}

/// A limit's value as a config wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitValue {
    Text(String),
    Int(i64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, v: LimitValue) -> Result<Limits, String> {
        let mut l = Limits::default();
        l.set(key, &v).map(|()| l)
    }

    #[test]
    fn limits_parse_to_their_cgroup_files() {
        let mut l = Limits::default();
        assert!(l.is_empty() && l.controllers().is_empty());
        l.set("memory_max", &LimitValue::Text("32MiB".into()))
            .unwrap();
        l.set("cpu_max", &LimitValue::Text("50%".into())).unwrap();
        l.set("pids_max", &LimitValue::Int(64)).unwrap();
        assert_eq!(l.controllers(), ["memory", "cpu", "pids"]);
        let files: Vec<(&str, String)> = l.files().into_iter().map(|(_, f, v)| (f, v)).collect();
        assert_eq!(
            files,
            [
                ("memory.max", "33554432".to_string()),
                ("memory.high", "max".into()),
                ("cpu.max", "50000 100000".into()),
                ("cpu.weight", "100".into()),
                ("pids.max", "64".into()),
                ("io.weight", "default 100".into()),
            ]
        );
        assert_eq!(
            set("cpu_max", LimitValue::Text("200%".into()))
                .unwrap()
                .files()[2]
                .2,
            "200000 100000"
        );
    }

    #[test]
    fn bad_limits_say_what_to_write() {
        for (key, v, want) in [
            (
                "memory_max",
                LimitValue::Text("lots".into()),
                "memory_max: bad size",
            ),
            ("memory_max", LimitValue::Int(0), "memory_max: write a size"),
            (
                "cpu_max",
                LimitValue::Text("50".into()),
                "cpu_max: write a share",
            ),
            (
                "cpu_max",
                LimitValue::Text("0%".into()),
                "cpu_max: write a share",
            ),
            (
                "cpu_weight",
                LimitValue::Int(0),
                "cpu_weight: must be a whole number from 1 to 10000",
            ),
            (
                "io_weight",
                LimitValue::Text("9".into()),
                "io_weight: must be a whole number",
            ),
            (
                "pids_max",
                LimitValue::Int(-1),
                "pids_max: must be a whole number from 1",
            ),
        ] {
            let e = set(key, v).unwrap_err();
            assert!(e.starts_with(want), "{key}: {e}");
        }
    }
}
