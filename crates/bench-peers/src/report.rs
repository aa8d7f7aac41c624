//! The figures: per-tool rows, their percentiles, the Markdown section that
//! replaces the marked part of `docs/benchmarks.md`, and the plot.

use crate::tools::Kind;
use crate::{Args, Scenario};
use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

pub const BEGIN: &str = "<!-- peers:begin -->";
pub const END: &str = "<!-- peers:end -->";

/// One tool in one latency scenario.
pub struct Row {
    pub scenario: Scenario,
    pub kind: Kind,
    pub samples: Vec<Duration>,
    /// Per run: live processes of the workload after the stop returned.
    pub survivors: Vec<usize>,
    /// Why the row has no (or no more) figures.
    pub failure: Option<String>,
    /// Non-zero exit codes of the stop command: code -> (runs, last stderr).
    exits: BTreeMap<i32, (usize, String)>,
}

impl Row {
    pub fn new(scenario: Scenario, kind: Kind) -> Row {
        Row {
            scenario,
            kind,
            samples: Vec::new(),
            survivors: Vec::new(),
            failure: None,
            exits: BTreeMap::new(),
        }
    }

    pub fn cannot(scenario: Scenario, kind: Kind, why: String) -> Row {
        let mut r = Row::new(scenario, kind);
        r.failure = Some(why);
        r
    }

    pub fn fail(&mut self, why: String) {
        eprintln!("{} {:?}: {why}", self.kind.label(), self.scenario);
        self.failure.get_or_insert(why);
    }

    pub fn note_exit(&mut self, code: i32, stderr: &str) {
        let e = self.exits.entry(code).or_insert((0, String::new()));
        e.0 += 1;
        e.1 = redact(stderr.lines().next().unwrap_or(""));
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.samples.clone();
        v.sort();
        v
    }

    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let v = self.sorted();
        if v.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
        v.get(rank.min(v.len() - 1)).copied()
    }

    fn survivors_max(&self) -> usize {
        self.survivors.iter().copied().max().unwrap_or(0)
    }

    fn survivors_text(&self) -> String {
        if self.survivors.is_empty() {
            return String::new();
        }
        let total: usize = self.survivors.iter().sum();
        let runs = self.survivors.iter().filter(|&&n| n > 0).count();
        if total == 0 {
            format!("0 in {} runs", self.survivors.len())
        } else {
            format!(
                "**{} per run** (max; in {runs} of {} runs)",
                self.survivors_max(),
                self.survivors.len()
            )
        }
    }

    /// For progress lines.
    pub fn brief(&self) -> String {
        match (self.percentile(50.0), &self.failure) {
            (_, Some(_)) if self.samples.is_empty() => "failed".into(),
            (None, _) => "-".into(),
            (Some(p50), _) => {
                let mut s = format!("p50 {}", dur(p50));
                if self.survivors_max() > 0 {
                    s += &format!(" left {}", self.survivors_max());
                }
                s
            }
        }
    }
}

/// One tool keeping N processes, idle.
pub struct IdleRow {
    pub kind: Kind,
    pub n: usize,
    pub cpu_pct: f64,
    pub pss_kb: u64,
    /// The tool's own processes (runsvdir and every runsv, ...).
    pub processes: usize,
    /// Workload processes alive at the end of the window.
    pub running: usize,
    pub window_secs: f64,
    pub failure: Option<String>,
}

impl IdleRow {
    pub fn cannot(kind: Kind, n: usize, why: String) -> IdleRow {
        IdleRow {
            kind,
            n,
            cpu_pct: 0.0,
            pss_kb: 0,
            processes: 0,
            running: 0,
            window_secs: 0.0,
            failure: Some(why),
        }
    }

    pub fn brief(&self) -> String {
        format!(
            "idle {:>5}  {:<24} cpu={:.3}% of a core over {:.0} s  pss={:.1} MB  processes={}  running={}",
            self.n,
            self.kind.label(),
            self.cpu_pct,
            self.window_secs,
            self.pss_kb as f64 / 1024.0,
            self.processes,
            self.running
        )
    }
}

pub fn dur(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1000.0 {
        format!("{:.3} s", ms / 1e3)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// The machine, from /proc.
pub struct Machine {
    cores: usize,
    mem_gib: f64,
    kernel: String,
    cpu: String,
    cgroup2: bool,
    root: bool,
    versions: Vec<(&'static str, String)>,
}

impl Machine {
    pub fn read() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".into());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut versions = Vec::new();
        for pkg in ["runit", "s6", "supervisor", "pacemaker", "resource-agents"] {
            let out = std::process::Command::new("dpkg-query")
                .args(["-W", "-f", "${Version}", pkg])
                .output();
            if let Ok(out) = out {
                if out.status.success() {
                    versions.push((pkg, String::from_utf8_lossy(&out.stdout).trim().to_owned()));
                }
            }
        }
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_gib: mem_kb / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpu,
            cgroup2: mounts.lines().any(|l| l.contains(" - cgroup2 ")),
            root: rustix::process::geteuid().is_root(),
            versions,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB, Linux {}, cgroup v2 {}, {}",
            self.cores,
            self.cpu,
            self.mem_gib,
            self.kernel,
            if self.cgroup2 { "mounted" } else { "absent" },
            if self.root { "as root" } else { "not root" },
        )
    }
}

fn command_line() -> String {
    let mut s = String::from("scripts/bench-peers");
    for a in std::env::args().skip(1) {
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=,./".contains(c))
        {
            s += &format!(" {a}");
        } else {
            s += &format!(" '{}'", a.replace('\'', "'\\''"));
        }
    }
    s
}

/// The Markdown that goes between the markers.
pub fn markdown(rows: &[Row], idle: &[IdleRow], m: &Machine, args: &Args) -> String {
    let mut s = String::new();
    let versions: Vec<String> = m.versions.iter().map(|(p, v)| format!("{p} {v}")).collect();
    let _ = writeln!(
        s,
        "Measured with `{}` on {} (Debian packages: {}).",
        command_line(),
        m.line(),
        versions.join(", ")
    );
    let _ = writeln!(
        s,
        "\nEach tool runs in a private directory, started by the benchmark, as its \
         documentation recommends; all run the same workload script and stop with the \
         same grace: SIGTERM, then SIGKILL after {} s (resmon `pending_timeout = \"{}s\"`, \
         runit `sv -w {} force-stop`, s6 `timeout-kill` {} ms with `s6-svc -wD -d`, \
         supervisord `stopwaitsecs={}` with `stopasgroup`/`killasgroup` both off (the default) \
         and both on, the `anything` agent's `stop_timeout={}` through \
         `crm_resource --force-stop`). resmon is driven by its CLI like the others \
         (`resmon offline NAME --wait`) and restarts with `restart_delay = \"0s\"` (runit, s6 \
         and supervisord restart without a delay). Runs alternate between tools \
         ({} measured runs each after {} warm-up runs). The benchmark is the subreaper of \
         everything it starts, so orphans are reaped at once as by a real init.",
        args.grace,
        args.grace,
        args.grace,
        args.grace * 1000,
        args.grace,
        args.grace,
        args.runs,
        args.warmup
    );
    let _ = writeln!(
        s,
        "\n- **crash → restarted**: SIGKILL of the supervised process (which ran at least \
         1.5 s, past every tool's crash-loop throttle) until a new process runs the command \
         (its pid file names a new pid whose `/proc/PID/cmdline` is `sleep`, polled every \
         100 µs).\n\
         - **stop, SIGTERM ignored**: the process ignores SIGTERM and has a `setsid` grandchild \
         (2 processes); from the stop command to its return, then live processes of the \
         workload {} ms later (survivors are killed before the next run).\n\
         - **stop, 100-process tree**: 33 children, 33 `setsid` children and 33 double-forked \
         orphans under a shell that does not ignore SIGTERM.\n\
         - **idle**: N `sleep` processes per tool, all tools at once; CPU time of the tool's \
         own processes (resmon; runsvdir and every runsv; s6-svscan and every s6-supervise; \
         supervisord) over {} s after {} s of settling, and their summed PSS.",
        crate::SURVIVOR_DELAY.as_millis(),
        args.window,
        args.settle
    );
    let _ = writeln!(
        s,
        "\n| scenario | tool | p50 | p99 | max | survivors | notes |\n|---|---|---|---|---|---|---|"
    );
    for scenario in [Scenario::Crash, Scenario::Hang, Scenario::Tree] {
        let these: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario).collect();
        // The best of the tools; the floor is no tool.
        let best = these
            .iter()
            .filter(|r| r.kind != Kind::Floor)
            .filter_map(|r| r.percentile(50.0))
            .min();
        for r in these {
            let p50 = r.percentile(50.0);
            let cell = |d: Option<Duration>, bold: bool| match d {
                Some(d) if bold => format!("**{}**", dur(d)),
                Some(d) => dur(d),
                None => "—".into(),
            };
            let mut notes = Vec::new();
            if let Some(f) = &r.failure {
                notes.push(f.replace('|', "\\|"));
            }
            for (code, (n, err)) in &r.exits {
                notes.push(format!(
                    "stop command exited {code} in {n} runs (`{}`)",
                    err.replace('|', "\\|").replace('`', "'")
                ));
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                scenario.title(),
                r.kind.label(),
                cell(p50, p50.is_some() && p50 == best),
                cell(r.percentile(99.0), false),
                cell(r.percentile(100.0), false),
                r.survivors_text(),
                notes.join("; ")
            );
        }
    }
    // How far each stop is from what the kernel allows.
    let p50 = |scenario, kind| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.kind == kind)
            .and_then(|r| r.percentile(50.0))
    };
    let mut ratios = Vec::new();
    for scenario in [Scenario::Hang, Scenario::Tree] {
        let Some(floor) = p50(scenario, Kind::Floor) else {
            continue;
        };
        for kind in [Kind::Resmon, Kind::ResmonNoCgroups] {
            let Some(t) = p50(scenario, kind) else {
                continue;
            };
            // The floor kills at once; the tools wait out the grace first
            // when SIGTERM is ignored, so that part is compared without it.
            let (t, what) = match scenario {
                Scenario::Hang => (
                    t.saturating_sub(Duration::from_secs(args.grace)),
                    format!(" after its {} s grace", args.grace),
                ),
                _ => (t, String::new()),
            };
            ratios.push(format!(
                "- {}: {}{what} takes {} at p50, {:.1}× the floor's {}",
                scenario.title(),
                kind.label(),
                dur(t),
                t.as_secs_f64() / floor.as_secs_f64().max(1e-9),
                dur(floor)
            ));
        }
    }
    if !ratios.is_empty() {
        let _ = writeln!(
            s,
            "\nThe **floor** is no tool: the workload runs in a cgroup of its own, and the \
             stop is the least the kernel allows, one write to `cgroup.kill`, then waiting \
             (poll on `cgroup.events`) for `populated 0` and for every pid to be reaped. \
             It has no grace: for the process that ignores SIGTERM, the tools' time is \
             compared after their {} s grace.\n\n{}",
            args.grace,
            ratios.join("\n")
        );
    }
    if !idle.is_empty() {
        let _ = writeln!(
            s,
            "\n| idle | tool | CPU, % of a core | PSS | tool processes | notes |\n|---|---|---|---|---|---|"
        );
        for r in idle {
            let (cpu, pss, procs) = if r.failure.is_some() {
                ("—".into(), "—".into(), "—".into())
            } else {
                (
                    format!("{:.2}%", r.cpu_pct),
                    format!("{:.1} MB", r.pss_kb as f64 / 1024.0),
                    r.processes.to_string(),
                )
            };
            let mut note = r.failure.clone().unwrap_or_default();
            if r.failure.is_none() && r.running != r.n {
                note = format!("only {} of {} running at the end", r.running, r.n);
            }
            let _ = writeln!(
                s,
                "| {} `sleep` | {} | {cpu} | {pss} | {procs} | {} |",
                r.n,
                r.kind.label(),
                note.replace('|', "\\|")
            );
        }
    }
    let _ = writeln!(
        s,
        "\n![p50 and p99 per tool and scenario, survivors, idle footprint](benchmarks.svg)"
    );
    s
}

/// Fails unless `path` has the markers, before anything is measured.
pub fn check_doc(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} has no {BEGIN} ... {END} section", path.display());
    };
    if e < b {
        bail!("{}: {END} comes before {BEGIN}", path.display());
    }
    Ok(())
}

/// Replaces what is between the markers, nothing else.
pub fn write_doc(path: &Path, section: &str) -> Result<()> {
    check_doc(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (head, rest) = text.split_once(BEGIN).context("no begin marker")?;
    let (_, tail) = rest.split_once(END).context("no end marker")?;
    let out = format!("{head}{BEGIN}\n{section}{END}{tail}");
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

const FONT: &str = "sans-serif";

fn bar_color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Resmon => RGBColor(31, 119, 180),
        Kind::ResmonNoCgroups => RGBColor(120, 170, 215),
        _ => RGBColor(150, 150, 150),
    }
}

/// One panel per scenario: horizontal bars to p50, a whisker to p99, on a
/// log scale; survivors in red. Then the idle footprint.
pub fn plot(path: &Path, rows: &[Row], idle: &[IdleRow]) -> Result<()> {
    let root = SVGBackend::new(path, (1300, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "resmon and other supervisors: p50 bar, p99 dot (log scale); red: processes left after the stop",
        (FONT, 18),
    )?;
    let (top, bottom) = root.split_vertically(560);
    let top_areas = top.split_evenly((1, 3));
    for (area, scenario) in top_areas
        .iter()
        .zip([Scenario::Crash, Scenario::Hang, Scenario::Tree])
    {
        latency_panel(area, scenario, rows)?;
    }
    let bottom_areas = bottom.split_evenly((1, 2));
    idle_panel(
        &bottom_areas[0],
        "idle memory: PSS of the tool's processes, MB",
        idle,
        |r| r.pss_kb as f64 / 1024.0,
        |v| format!("{v:.1} MB"),
    )?;
    idle_panel(
        &bottom_areas[1],
        "idle CPU: % of one core",
        idle,
        |r| r.cpu_pct,
        |v| format!("{v:.2}%"),
    )?;
    root.present()?;
    Ok(())
}

fn label_style(color: RGBColor) -> TextStyle<'static> {
    let mut style = TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    style.color = color.to_backend_color();
    style
}

fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    scenario: Scenario,
    rows: &[Row],
) -> Result<()> {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| [r.percentile(50.0), r.percentile(99.0)])
        .flatten()
        .map(ms)
        .collect();
    // Whole decades: one more below the fastest (bars stay visible when all
    // values are close), and room for the labels above the slowest.
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let min = if min.is_finite() { min.max(0.01) } else { 1.0 };
    let max = values.iter().copied().fold(min, f64::max);
    let lo = 10f64.powf(min.log10().floor() - 1.0);
    let hi = 10f64.powf((max * 20.0).log10().ceil());
    let names: Vec<&str> = rows.iter().map(|r| r.kind.label()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(scenario.title(), (FONT, 15))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(150)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())?;
    let position = |i: usize| n - 1 - i;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(p) if *p < n => names[n - 1 - *p].to_owned(),
            _ => String::new(),
        })
        .x_desc("ms")
        .x_label_formatter(&|v| {
            // Decades only: 1-2-5 steps crowd a narrow log axis.
            let exp = v.log10();
            if (exp - exp.round()).abs() > 1e-6 {
                String::new()
            } else if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        })
        .label_style((FONT, 12))
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let pos = position(i);
        let (Some(p50), Some(p99)) = (r.percentile(50.0), r.percentile(99.0)) else {
            let why = r.failure.as_deref().unwrap_or("no figures");
            let short = if r.kind.cannot_supervise().is_some() {
                "cannot: no cluster-less supervision"
            } else {
                why.split(':').next().unwrap_or(why)
            };
            chart.draw_series(std::iter::once(Text::new(
                short.to_owned(),
                (lo * 1.2, SegmentValue::CenterOf(pos)),
                label_style(RGBColor(110, 110, 110)),
            )))?;
            continue;
        };
        let (p50, p99) = (ms(p50), ms(p99));
        let mut bar = Rectangle::new(
            [
                (lo, SegmentValue::Exact(pos)),
                (p50, SegmentValue::Exact(pos + 1)),
            ],
            bar_color(r.kind).filled(),
        );
        bar.set_margin(7, 7, 0, 0);
        chart.draw_series(std::iter::once(bar))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (p50, SegmentValue::CenterOf(pos)),
                (p99, SegmentValue::CenterOf(pos)),
            ],
            BLACK.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Circle::new(
            (p99, SegmentValue::CenterOf(pos)),
            3,
            BLACK.filled(),
        )))?;
        let left = r.survivors_max();
        let (text, color) = if left > 0 {
            (
                format!("{} · {left} left", dur(Duration::from_secs_f64(p50 / 1e3))),
                RGBColor(200, 30, 30),
            )
        } else {
            (
                dur(Duration::from_secs_f64(p50 / 1e3)),
                RGBColor(30, 30, 30),
            )
        };
        chart.draw_series(std::iter::once(Text::new(
            text,
            (p99 * 1.3, SegmentValue::CenterOf(pos)),
            label_style(color),
        )))?;
    }
    Ok(())
}

fn idle_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    idle: &[IdleRow],
    value: impl Fn(&IdleRow) -> f64,
    fmt: impl Fn(f64) -> String,
) -> Result<()> {
    let mut kinds: Vec<Kind> = idle.iter().map(|r| r.kind).collect();
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        return Ok(());
    }
    let mut sizes: Vec<usize> = idle.iter().map(|r| r.n).collect();
    sizes.sort();
    sizes.dedup();
    let n = kinds.len();
    let max = idle
        .iter()
        .filter(|r| r.failure.is_none())
        .map(&value)
        .fold(0.0, f64::max)
        .max(1e-3);
    let names: Vec<&str> = kinds.iter().map(|k| k.label()).collect();
    let sizes_text: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{title} (bars: {} sleep processes)", sizes_text.join(" / ")),
            (FONT, 15),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(150)
        .build_cartesian_2d(0.0..max * 1.8, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(p) if *p < n => names[n - 1 - *p].to_owned(),
            _ => String::new(),
        })
        .label_style((FONT, 12))
        .draw()?;
    let band = chart.plotting_area().dim_in_pixel().1 / n as u32;
    let slots = sizes.len().max(1) as u32;
    let slot = band.saturating_sub(8) / slots;
    for (i, kind) in kinds.iter().enumerate() {
        let pos = n - 1 - i;
        for (j, size) in sizes.iter().enumerate() {
            let Some(r) = idle.iter().find(|r| r.kind == *kind && r.n == *size) else {
                continue;
            };
            let j = j as u32;
            // Bars stacked from the top of the band, smallest size first.
            let top = 4 + j * slot;
            let bottom = band.saturating_sub(4 + (j + 1) * slot);
            if let Some(why) = &r.failure {
                // Pacemaker's reason once per tool; any other failure per size.
                let cannot = kind.cannot_supervise().is_some();
                if cannot && j > 0 {
                    continue;
                }
                let (text, color) = if cannot {
                    (
                        "cannot: no cluster-less supervision".to_owned(),
                        RGBColor(110, 110, 110),
                    )
                } else {
                    (format!("{size}: {why}"), RGBColor(200, 30, 30))
                };
                chart.draw_series(std::iter::once(
                    EmptyElement::at((0.0, SegmentValue::Exact(pos + 1)))
                        + Text::new(text, (6, (top + slot / 2) as i32), label_style(color)),
                ))?;
                continue;
            }
            let v = value(r);
            let base = bar_color(*kind);
            let color = if j + 1 < slots {
                base.mix(0.5).filled()
            } else {
                base.filled()
            };
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(pos)),
                    (v, SegmentValue::Exact(pos + 1)),
                ],
                color,
            );
            bar.set_margin(top, bottom, 0, 0);
            chart.draw_series(std::iter::once(bar))?;
            // The label sits at the bar's end, in the middle of its slot.
            let frac = (top + slot / 2) as f64 / band as f64;
            chart.draw_series(std::iter::once(
                EmptyElement::at((v, SegmentValue::Exact(pos + 1)))
                    + Text::new(
                        format!("{} ({size})", fmt(v)),
                        (6, (frac * band as f64) as i32),
                        label_style(RGBColor(30, 30, 30)),
                    ),
            ))?;
        }
    }
    Ok(())
}

/// What a tool said, without what differs from run to run: paths under the
/// run's temporary directory become their last part, the number after
/// `(pid` becomes `N`.
fn redact(line: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for word in line.split(' ') {
        let after_pid = out.last().is_some_and(|w| w == "(pid");
        let digits = word.trim_end_matches([')', ',', ':']);
        out.push(if word.starts_with('/') && word.contains("bench-peers.") {
            let colon = if word.ends_with(':') { ":" } else { "" };
            let tail = word.trim_end_matches(':').rsplit('/').next().unwrap_or("");
            format!("{tail}{colon}")
        } else if after_pid && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            format!("N{}", &word[digits.len()..])
        } else {
            word.to_owned()
        });
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_drops_run_paths_and_pids() {
        assert_eq!(
            super::redact(
                "kill: run: /tmp/bench-peers.UZjLnp/hang-runit/tool/service/svc: (pid 672) 5s, normally down"
            ),
            "kill: run: svc: (pid N) 5s, normally down"
        );
        assert_eq!(super::redact("plain words 12"), "plain words 12");
    }
}
