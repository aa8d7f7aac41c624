//! `resmon-bench-peers`: resmon side by side with the supervisors people use
//! today (runit, s6, supervisord, Pacemaker's `crm_resource`), on the jobs
//! resmon exists for. It owns the scenarios, the order in which tools run,
//! and the figures it writes to `docs/benchmarks.md` (between the markers
//! `<!-- peers:begin -->` and `<!-- peers:end -->`) and `docs/benchmarks.svg`.
//!
//! Scenarios, each against every tool in the same run, alternating (run 1
//! of every tool, then run 2 of every tool, ...) after warm-up runs:
//!
//! * `crash`: the supervised process is killed with SIGKILL; the time until
//!   its replacement runs the command (its pid file names a new pid whose
//!   `/proc/PID/cmdline` is `sleep`, polled every 100 µs for every tool).
//!   A process is killed only after it ran 1.5 s, past every tool's
//!   crash-loop throttle (runit and s6 wait 1 s before restarting a process
//!   that lived less than 1 s; supervisord's `startsecs` is 1 s).
//! * `hang`: a process that ignores SIGTERM and has a `setsid` grandchild is
//!   stopped with the tool's own command; the time until the command
//!   returns, and how many of its processes are alive 100 ms later.
//! * `tree`: the same with a 100-process tree (33 children, 33 `setsid`
//!   children, 33 double-forked orphans) that does not ignore SIGTERM.
//! * `idle`: every tool keeps N `sleep` processes; the CPU time of the
//!   tool's own processes over a window, and their proportional set size.
//!
//! Every tool runs the same workload script, has the same stop grace
//! (`--grace`, SIGTERM then SIGKILL), and lives in a private directory,
//! started by the benchmark and torn down after each scenario.
//!
//! The program first makes itself a child subreaper and runs the benchmark
//! in a child process: orphans (double-forked workloads, the processes
//! Pacemaker's agent starts with `nohup ... &`) are reaped at once, as a
//! real init would, and when the benchmark ends (or fails, or is
//! interrupted) everything that carries the run's mark is killed.

mod procs;
mod report;
mod tools;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use report::{IdleRow, Row};
use rustix::process::Signal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};
use tools::{Instance, Kind, Service, Settings};

#[derive(Parser)]
#[command(about = "resmon side by side with runit, s6, supervisord and Pacemaker")]
pub struct Args {
    /// Which scenarios to run.
    #[arg(value_enum, default_values_t = [Scenario::All])]
    scenarios: Vec<Scenario>,
    /// Which tools to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Kind::ALL)]
    tools: Vec<Kind>,
    /// Measured runs per latency scenario and tool.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Unmeasured runs first, per scenario and tool.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Stop grace in seconds, for every tool: SIGTERM, then SIGKILL after this.
    #[arg(long, default_value_t = 1)]
    grace: u64,
    /// Supervised `sleep` processes in the idle scenario (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
    idle: Vec<usize>,
    /// Seconds over which the idle scenario measures CPU time.
    #[arg(long, default_value_t = 30)]
    window: u64,
    /// Seconds the idle scenario waits, once all is running, before measuring.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// The resmon binary [default: `resmon` next to this program].
    #[arg(long)]
    resmon: Option<PathBuf>,
    /// The Markdown file whose marked section gets the figures.
    #[arg(long, default_value = "docs/benchmarks.md")]
    doc: PathBuf,
    /// The plot.
    #[arg(long, default_value = "docs/benchmarks.svg")]
    svg: PathBuf,
    /// Print the figures only; write neither the doc nor the plot.
    #[arg(long)]
    dry_run: bool,
    /// The whole run stops with an error past this many seconds.
    #[arg(long, default_value_t = 5400)]
    time_limit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    All,
    Crash,
    Hang,
    Tree,
    Idle,
}

impl Scenario {
    pub fn title(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Crash => "crash → restarted",
            Scenario::Hang => "stop: SIGTERM ignored + setsid grandchild",
            Scenario::Tree => "stop: 100-process tree",
            Scenario::Idle => "idle",
        }
    }
}

/// A process is killed in `crash` only after it ran this long.
const MIN_UPTIME: Duration = Duration::from_millis(1500);
/// The longest any single step may take before the tool's row fails.
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// How long after a stop returned its survivors are counted.
const SURVIVOR_DELAY: Duration = Duration::from_millis(100);
const SLEEP: &str = "sleep 100000000";

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == tools::FLOOR_STOP {
        return match tools::floor_stop(Path::new(&args[2])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor stop: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = if std::env::var_os(procs::RUN).is_none() {
        reaper()
    } else {
        bench()
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("resmon-bench-peers: {e:#}");
            ExitCode::FAILURE
        }
    }
}

extern "C" fn ignore(_: std::ffi::c_int) {}

/// The outer process: a subreaper that reaps every orphan at once, runs the
/// benchmark as its child and, when that ends, kills what the run left.
fn reaper() -> Result<ExitCode> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    use rustix::process::{wait, WaitOptions};
    let me = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let run = format!("bp{me}.{nanos}");
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("becoming a child subreaper")?;
    // Ctrl-C reaches the benchmark (it dies); this process stays to clean up.
    let action = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [
        nix::sys::signal::SIGINT,
        nix::sys::signal::SIGTERM,
        nix::sys::signal::SIGHUP,
    ] {
        // SAFETY: the handler does nothing, so it is async-signal-safe, and
        // no other code in this process installs handlers.
        unsafe { sigaction(sig, &action) }.context("installing a signal handler")?;
    }
    let exe = std::env::current_exe().context("finding this program")?;
    let child = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(procs::RUN, &run)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let inner = child.id() as i32;
    let status = loop {
        match wait(WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == inner => break status,
            Ok(Some(_)) => {}
            Ok(None) => bail!("the benchmark process vanished"),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e).context("waiting for children"),
        }
    };
    let left = procs::kill_run(&run, &[me]);
    while let Ok(Some(_)) = wait(WaitOptions::NOHANG) {}
    tools::remove_floor_cgroups(inner as u32);
    if left > 0 {
        eprintln!("resmon-bench-peers: {left} processes of the run could not be killed");
    }
    Ok(match status.exit_status() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => {
            eprintln!(
                "resmon-bench-peers: ended by signal {}",
                status.terminating_signal().unwrap_or(0)
            );
            ExitCode::FAILURE
        }
    })
}

/// What every scenario needs.
struct Ctx {
    args: Args,
    run: String,
    settings: Settings,
    root: tempfile::TempDir,
    /// This process and the reaper: never killed by `kill_run`.
    spare: [u32; 2],
    deadline: Instant,
}

impl Ctx {
    fn mark(&self, kind: Kind, scenario: &str) -> String {
        format!("{}/{}/{scenario}", self.run, kind.slug())
    }

    fn check_time(&self) -> Result<()> {
        if Instant::now() > self.deadline {
            bail!(
                "the run took longer than --time-limit {} s",
                self.args.time_limit
            );
        }
        Ok(())
    }

    /// Kills whatever the run still has (between scenarios, and at the end).
    fn sweep(&self) {
        let left = procs::kill_run(&self.run, &self.spare);
        if left > 0 {
            eprintln!("warning: {left} processes of the run could not be killed");
        }
    }

    /// Tools of this run that can run here, and rows for those that cannot.
    fn tools(&self, scenario: Scenario, supervise: bool, rows: &mut Vec<Row>) -> Vec<Kind> {
        let mut out = Vec::new();
        for &kind in &self.args.tools {
            if let Some(why) = tools::missing(kind, &self.settings.resmon) {
                rows.push(Row::cannot(
                    scenario,
                    kind,
                    format!("cannot run here: {why}"),
                ));
            } else if let (true, Some(why)) = (supervise, kind.cannot_supervise()) {
                rows.push(Row::cannot(scenario, kind, why.to_owned()));
            } else {
                out.push(kind);
            }
        }
        out
    }
}

/// The workload every tool runs, as a `/bin/sh` script.
enum Workload {
    Sleep,
    Hang,
    Tree,
}

fn write_script(path: &Path, mark: &str, pidfile: Option<&Path>, w: &Workload) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut s = format!(
        "#!/bin/sh\n{}={mark}; export {}\n",
        procs::MARK,
        procs::MARK
    );
    let pid = pidfile.map_or(String::new(), |p| format!("echo $$ > {}\n", p.display()));
    let ones: Vec<String> = (1..=33).map(|i| i.to_string()).collect();
    let ones = ones.join(" ");
    match w {
        Workload::Sleep => s += &format!("{pid}exec {SLEEP}\n"),
        Workload::Hang => {
            s += &format!("trap '' TERM\nsh -c 'setsid {SLEEP} &'\n{pid}exec {SLEEP}\n");
        }
        Workload::Tree => {
            s += &format!(
                "for i in {ones}; do {SLEEP} & done\n\
                 for i in {ones}; do setsid {SLEEP} & done\n\
                 for i in {ones}; do setsid sh -c '{SLEEP} &'; done\n{pid}wait\n"
            );
        }
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

fn read_pid(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    // A complete line only: the shell may be between truncating and writing.
    text.strip_suffix('\n')?.trim().parse().ok()
}

/// Runs `cmd` to its end; its exit code (-1 for a signal) and what it said.
fn run_cmd(mut cmd: Command) -> Result<(i32, String)> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let said = [&out.stderr, &out.stdout]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    Ok((out.status.code().unwrap_or(-1), said))
}

fn bench() -> Result<ExitCode> {
    let args = Args::parse();
    let run = std::env::var(procs::RUN).context("the run's mark")?;
    let resmon = match &args.resmon {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this program")?
            .join("resmon"),
    };
    if !args.dry_run {
        report::check_doc(&args.doc)?;
    }
    let settings = Settings {
        resmon,
        grace_secs: args.grace,
        stops: true,
    };
    let ctx = Ctx {
        deadline: Instant::now() + Duration::from_secs(args.time_limit),
        root: tempfile::Builder::new()
            .prefix("bench-peers.")
            .tempdir()
            .context("creating a temporary directory")?,
        spare: [std::process::id(), std::os::unix::process::parent_id()],
        run,
        settings,
        args,
    };
    let machine = report::Machine::read();
    println!("resmon-bench-peers: {}", machine.line());
    let all = ctx.args.scenarios.contains(&Scenario::All);
    let want = |s| all || ctx.args.scenarios.contains(&s);
    let mut rows = Vec::new();
    let mut idle_rows = Vec::new();
    let result = (|| -> Result<()> {
        if want(Scenario::Crash) {
            crash(&ctx, &mut rows)?;
            ctx.sweep();
        }
        if want(Scenario::Hang) {
            stop(&ctx, Scenario::Hang, &mut rows)?;
            ctx.sweep();
        }
        if want(Scenario::Tree) {
            stop(&ctx, Scenario::Tree, &mut rows)?;
            ctx.sweep();
        }
        if want(Scenario::Idle) {
            for &n in &ctx.args.idle {
                idle(&ctx, n, &mut idle_rows)?;
                ctx.sweep();
            }
        }
        Ok(())
    })();
    ctx.sweep();
    result?;
    rows.sort_by_key(|r| (r.scenario as u8, r.kind));
    idle_rows.sort_by_key(|r| (r.n, r.kind));
    println!();
    let summary = report::markdown(&rows, &idle_rows, &machine, &ctx.args);
    println!("{summary}");
    if !ctx.args.dry_run {
        report::write_doc(&ctx.args.doc, &summary)?;
        report::plot(&ctx.args.svg, &rows, &idle_rows)?;
        println!(
            "wrote {} and {}",
            ctx.args.doc.display(),
            ctx.args.svg.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One tool in a latency scenario.
struct Subject {
    inst: Instance,
    mark: String,
    pidfile: PathBuf,
    row: Row,
    /// crash: the running pid and when it was first seen.
    pid: u32,
    seen: Instant,
}

impl Subject {
    fn new(ctx: &Ctx, scenario: Scenario, kind: Kind, w: &Workload, auto: bool) -> Result<Subject> {
        let tag = format!("{scenario:?}").to_lowercase();
        let dir = ctx.root.path().join(format!("{tag}-{}", kind.slug()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mark = ctx.mark(kind, &tag);
        let pidfile = dir.join("workload.pid");
        let script = dir.join("workload.sh");
        write_script(&script, &mark, Some(&pidfile), w)?;
        let svc = Service {
            name: "svc".into(),
            script,
            autostart: auto,
        };
        let inst = Instance::start(kind, &dir.join("tool"), &[svc], &ctx.settings)
            .with_context(|| format!("setting up {}", kind.label()))?;
        Ok(Subject {
            inst,
            mark,
            pidfile,
            row: Row::new(scenario, kind),
            pid: 0,
            seen: Instant::now(),
        })
    }

    /// The workload's live processes: those carrying its mark, and its main
    /// process (a shell that exported the mark itself has it only in its
    /// memory, not in `/proc/PID/environ`).
    fn workload(&self) -> Vec<u32> {
        let run = self.mark.split('/').next().unwrap_or_default();
        let mut pids = procs::marked(run).remove(&self.mark).unwrap_or_default();
        if let Some(main) = read_pid(&self.pidfile) {
            if procs::alive(main) && !pids.contains(&main) {
                pids.push(main);
            }
        }
        pids
    }

    /// Kills the workload; fails when SIGKILL does not end it.
    fn kill_workload(&self) -> Result<()> {
        if let Some(main) = read_pid(&self.pidfile) {
            procs::kill(main, Signal::KILL);
        }
        if procs::kill_marked(&self.mark) > 0 {
            bail!(
                "{}: processes that SIGKILL does not end",
                self.inst.kind.label()
            );
        }
        let _ = std::fs::remove_file(&self.pidfile);
        Ok(())
    }

    /// The pid in the pid file once it runs `sleep`, other than `old`.
    fn running_sleep(&self, old: u32) -> Option<u32> {
        let pid = read_pid(&self.pidfile)?;
        (pid != old && procs::argv0(pid) == b"sleep").then_some(pid)
    }
}

fn start_subjects(
    ctx: &Ctx,
    scenario: Scenario,
    w: &Workload,
    auto: bool,
    rows: &mut Vec<Row>,
) -> Result<Vec<Subject>> {
    let mut out = Vec::new();
    for kind in ctx.tools(scenario, scenario == Scenario::Crash, rows) {
        match Subject::new(ctx, scenario, kind, w, auto) {
            Ok(s) => out.push(s),
            Err(e) if !kind.is_resmon() => {
                eprintln!("{}: {e:#}", kind.label());
                rows.push(Row::cannot(
                    scenario,
                    kind,
                    format!("failed to set up: {e:#}"),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn progress(scenario: Scenario, round: usize, ctx: &Ctx, subjects: &[Subject]) {
    let total = ctx.args.warmup + ctx.args.runs;
    if round + 1 != total && (round + 1) % 10 != 0 {
        return;
    }
    let mut line = format!("{:?} {}/{total}:", scenario, round + 1);
    for s in subjects {
        line += &format!("  {} {}", s.row.kind.label(), s.row.brief());
    }
    println!("{line}");
}

fn crash(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    let scenario = Scenario::Crash;
    println!("== {}", scenario.title());
    let mut subjects = start_subjects(ctx, scenario, &Workload::Sleep, true, rows)?;
    for s in &mut subjects {
        let end = Instant::now() + STEP_LIMIT;
        loop {
            if let Some(pid) = s.running_sleep(0) {
                s.pid = pid;
                s.seen = Instant::now();
                break;
            }
            if Instant::now() > end {
                s.row.fail("the workload never started".into());
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for round in 0..ctx.args.warmup + ctx.args.runs {
        ctx.check_time()?;
        for s in subjects.iter_mut().filter(|s| s.row.failure.is_none()) {
            let up = s.seen.elapsed();
            if up < MIN_UPTIME {
                std::thread::sleep(MIN_UPTIME - up);
            }
            let old = s.pid;
            let t0 = Instant::now();
            procs::kill(old, Signal::KILL);
            let new = loop {
                if let Some(pid) = s.running_sleep(old) {
                    break Some(pid);
                }
                if t0.elapsed() > STEP_LIMIT {
                    break None;
                }
                std::thread::sleep(Duration::from_micros(100));
            };
            let took = t0.elapsed();
            let Some(new) = new else {
                s.row.fail(format!(
                    "run {round}: not restarted within {} s",
                    STEP_LIMIT.as_secs()
                ));
                continue;
            };
            s.pid = new;
            s.seen = Instant::now();
            if round >= ctx.args.warmup {
                s.row.samples.push(took);
            }
        }
        progress(scenario, round, ctx, &subjects);
    }
    finish(subjects, rows);
    Ok(())
}

fn finish(subjects: Vec<Subject>, rows: &mut Vec<Row>) {
    for mut s in subjects {
        s.inst.shutdown();
        if let Err(e) = s.kill_workload() {
            eprintln!("{e:#}");
        }
        rows.push(s.row);
    }
}

/// Brings every subject's workload up at once (their commands run side by
/// side) and waits until each is complete.
fn bring_up(subjects: &mut [Subject], expected: usize) -> Result<()> {
    let mut started: Vec<(usize, Child)> = Vec::new();
    for (i, s) in subjects.iter_mut().enumerate() {
        if s.row.failure.is_some() {
            continue;
        }
        let _ = std::fs::remove_file(&s.pidfile);
        match s.inst.up("svc").spawn() {
            Ok(c) => started.push((i, c)),
            Err(e) => s.row.fail(format!("starting the up command: {e}")),
        }
    }
    for (i, child) in started {
        let s = &mut subjects[i];
        match child.wait_with_output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => s.row.fail(format!(
                "up command: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => s.row.fail(format!("up command: {e}")),
        }
    }
    for s in subjects.iter_mut().filter(|s| s.row.failure.is_none()) {
        let end = Instant::now() + STEP_LIMIT;
        loop {
            let ready =
                read_pid(&s.pidfile).is_some_and(procs::alive) && s.workload().len() >= expected;
            if ready {
                break;
            }
            if Instant::now() > end {
                s.row.fail(format!(
                    "the workload did not reach {expected} processes ({} after {} s)",
                    s.workload().len(),
                    STEP_LIMIT.as_secs()
                ));
                s.kill_workload()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

fn stop(ctx: &Ctx, scenario: Scenario, rows: &mut Vec<Row>) -> Result<()> {
    println!("== {}", scenario.title());
    let (w, expected) = match scenario {
        Scenario::Hang => (Workload::Hang, 2),
        _ => (Workload::Tree, 100),
    };
    let mut subjects = start_subjects(ctx, scenario, &w, false, rows)?;
    for round in 0..ctx.args.warmup + ctx.args.runs {
        ctx.check_time()?;
        bring_up(&mut subjects, expected)?;
        for s in subjects.iter_mut().filter(|s| s.row.failure.is_none()) {
            let cmd = s.inst.down("svc");
            let t0 = Instant::now();
            let outcome = run_cmd(cmd);
            let took = t0.elapsed();
            std::thread::sleep(SURVIVOR_DELAY);
            let left = s.workload().len();
            s.kill_workload()?;
            match outcome {
                Ok((code, err)) => {
                    if round >= ctx.args.warmup {
                        s.row.samples.push(took);
                        s.row.survivors.push(left);
                        if code != 0 {
                            s.row.note_exit(code, &err);
                        }
                    }
                }
                Err(e) => s.row.fail(format!("{e:#}")),
            }
        }
        progress(scenario, round, ctx, &subjects);
    }
    finish(subjects, rows);
    Ok(())
}

fn idle(ctx: &Ctx, n: usize, rows: &mut Vec<IdleRow>) -> Result<()> {
    println!("== idle with {n} supervised sleep processes");
    let mut dummy = Vec::new();
    let kinds = ctx.tools(Scenario::Idle, true, &mut dummy);
    for r in dummy {
        rows.push(IdleRow::cannot(r.kind, n, r.failure.unwrap_or_default()));
    }
    let mut running: Vec<(Kind, String, Instance)> = Vec::new();
    for kind in kinds {
        let tag = format!("idle{n}");
        let dir = ctx.root.path().join(format!("{tag}-{}", kind.slug()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mark = ctx.mark(kind, &tag);
        let script = dir.join("workload.sh");
        write_script(&script, &mark, None, &Workload::Sleep)?;
        let services: Vec<Service> = (0..n)
            .map(|i| Service {
                name: format!("sleep{i}"),
                script: script.clone(),
                autostart: true,
            })
            .collect();
        let settings = Settings {
            resmon: ctx.settings.resmon.clone(),
            grace_secs: ctx.settings.grace_secs,
            stops: false,
        };
        match Instance::start(kind, &dir.join("tool"), &services, &settings) {
            Ok(inst) => running.push((kind, mark, inst)),
            Err(e) if !kind.is_resmon() => {
                rows.push(IdleRow::cannot(kind, n, format!("failed to set up: {e:#}")));
            }
            Err(e) => return Err(e.context(format!("setting up {}", kind.label()))),
        }
    }
    let limit = STEP_LIMIT + Duration::from_millis(100 * n as u64);
    let end = Instant::now() + limit;
    loop {
        ctx.check_time()?;
        let marked = procs::marked(&ctx.run);
        let short = |mark: &String| marked.get(mark).map_or(0, Vec::len) < n;
        if !running.iter().any(|(_, mark, _)| short(mark)) {
            break;
        }
        if Instant::now() > end {
            // A tool that cannot start them all in time gets a row saying so.
            let (slow, ok): (Vec<_>, Vec<_>) =
                running.into_iter().partition(|(_, mark, _)| short(mark));
            running = ok;
            for (kind, mark, mut inst) in slow {
                let up = marked.get(&mark).map_or(0, Vec::len);
                eprintln!("{}: only {up} of {n} running", kind.label());
                rows.push(IdleRow::cannot(
                    kind,
                    n,
                    format!(
                        "only {up} of {n} running {} s after it started",
                        limit.as_secs()
                    ),
                ));
                inst.shutdown();
                procs::kill_marked(&mark);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "all {n} running under every tool; settling {} s",
        ctx.args.settle
    );
    std::thread::sleep(Duration::from_secs(ctx.args.settle));
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let before: Vec<Vec<procs::Stat>> = running
        .iter()
        .map(|(_, _, inst)| {
            inst.daemon_pid()
                .map_or(Vec::new(), procs::supervisor_processes)
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(ctx.args.window));
    let secs = t0.elapsed().as_secs_f64();
    let marked = procs::marked(&ctx.run);
    for ((kind, mark, inst), before) in running.iter().zip(before) {
        let after = inst
            .daemon_pid()
            .map_or(Vec::new(), procs::supervisor_processes);
        let ticks: u64 = after
            .iter()
            .filter_map(|a| {
                let b = before.iter().find(|b| b.pid == a.pid)?;
                Some(a.ticks.saturating_sub(b.ticks))
            })
            .sum();
        let pss: u64 = after
            .iter()
            .filter_map(|p| procs::kb(p.pid, "smaps_rollup", "Pss:"))
            .sum();
        let row = IdleRow {
            kind: *kind,
            n,
            cpu_pct: ticks as f64 / hz / secs * 100.0,
            pss_kb: pss,
            processes: after.len(),
            running: marked.get(mark).map_or(0, Vec::len),
            window_secs: secs,
            failure: None,
        };
        println!("{}", row.brief());
        rows.push(row);
    }
    for (_, mark, mut inst) in running {
        inst.shutdown();
        procs::kill_marked(&mark);
    }
    Ok(())
}
