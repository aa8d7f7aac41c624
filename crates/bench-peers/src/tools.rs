//! The supervisors under test, each set up in a private directory as its own
//! documentation recommends, and the commands an operator would use on them.
//!
//! * resmon: `resmon serve` on a config of its own; `resmon online --wait`,
//!   `resmon offline --wait`.
//! * runit: `runsvdir` on a service directory; `sv up`, `sv -w GRACE force-stop`.
//! * s6: `s6-svscan` on a scan directory, `timeout-kill` in each service;
//!   `s6-svc -u`, `s6-svc -wD -d` (waits until the service is really down).
//! * supervisord: its own config and unix socket; `supervisorctl start`,
//!   `supervisorctl stop` (which waits for STOPPED); once with
//!   `stopasgroup`/`killasgroup` off (the default) and once with both on.
//! * Pacemaker: no cluster runs here, so the `ocf:heartbeat:anything` agent
//!   is driven by `crm_resource --force-start/--force-stop` on a CIB file.

use crate::procs;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Kind {
    Resmon,
    /// resmon with `cgroups = "off"`: process groups and marked descendants.
    ResmonNoCgroups,
    Runit,
    S6,
    Supervisord,
    SupervisordGroup,
    Pacemaker,
    /// No tool: the least a stop can cost here. The workload runs in a
    /// cgroup of its own; the stop writes `cgroup.kill` and returns once
    /// `cgroup.events` says `populated 0` and every pid is reaped.
    Floor,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Resmon,
        Kind::ResmonNoCgroups,
        Kind::Runit,
        Kind::S6,
        Kind::Supervisord,
        Kind::SupervisordGroup,
        Kind::Pacemaker,
        Kind::Floor,
    ];

    /// The row's name in the table and the plot.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Resmon => "resmon",
            Kind::ResmonNoCgroups => "resmon, cgroups off",
            Kind::Runit => "runit",
            Kind::S6 => "s6",
            Kind::Supervisord => "supervisord",
            Kind::SupervisordGroup => "supervisord, as group",
            Kind::Pacemaker => "Pacemaker crm_resource",
            Kind::Floor => "floor: cgroup.kill",
        }
    }

    /// A short name for marks and directories.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::Resmon => "resmon",
            Kind::ResmonNoCgroups => "resmon-nocg",
            Kind::Runit => "runit",
            Kind::S6 => "s6",
            Kind::Supervisord => "supervisord",
            Kind::SupervisordGroup => "supervisord-group",
            Kind::Pacemaker => "pacemaker",
            Kind::Floor => "floor",
        }
    }

    pub fn is_resmon(self) -> bool {
        matches!(self, Kind::Resmon | Kind::ResmonNoCgroups)
    }

    /// Why this tool cannot keep a process running by itself, if it cannot.
    pub fn cannot_supervise(self) -> Option<&'static str> {
        match self {
            Kind::Pacemaker => Some(
                "cannot: restarts and recurring monitors are the cluster's (pacemaker-controld \
                 with corosync); without a cluster `crm_resource --force-*` runs the agent once",
            ),
            Kind::Floor => Some("a floor for stops only: nothing restarts or watches"),
            _ => None,
        }
    }

    /// The programs it needs, to say clearly what is missing.
    fn programs(self) -> &'static [&'static str] {
        match self {
            Kind::Resmon | Kind::ResmonNoCgroups => &[],
            Kind::Runit => &["runsvdir", "sv"],
            Kind::S6 => &["s6-svscan", "s6-svc"],
            Kind::Supervisord | Kind::SupervisordGroup => &["supervisord", "supervisorctl"],
            Kind::Pacemaker => &["crm_resource"],
            Kind::Floor => &["setsid"],
        }
    }
}

/// Why `kind` cannot run here at all, if it cannot.
pub fn missing(kind: Kind, resmon: &Path) -> Option<String> {
    if kind.is_resmon() && !resmon.is_file() {
        return Some(format!("{} not found", resmon.display()));
    }
    if kind == Kind::Pacemaker && !Path::new(ANYTHING).exists() {
        return Some(format!("{ANYTHING} not found (resource-agents)"));
    }
    if kind == Kind::Floor {
        if let Err(e) = own_cgroup() {
            return Some(format!("no cgroup v2 of its own: {e:#}"));
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    kind.programs()
        .iter()
        .find(|p| !std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .map(|p| format!("{p} not found"))
}

const ANYTHING: &str = "/usr/lib/ocf/resource.d/heartbeat/anything";

/// A supervised service: its name, the workload script, the file the script
/// writes its pid to, and whether the supervisor starts it by itself.
pub struct Service {
    pub name: String,
    pub script: PathBuf,
    pub autostart: bool,
}

/// What every supervisor is configured with.
pub struct Settings {
    pub resmon: PathBuf,
    /// The stop grace: SIGTERM, then this long, then SIGKILL.
    pub grace_secs: u64,
    /// Whether the scenario stops services. Only then is resmon's
    /// `pending_timeout` set to the grace: it also bounds `online`, which
    /// the idle scenario's 1,000 start-ups must not be held to.
    pub stops: bool,
}

/// One running supervisor with its services.
pub struct Instance {
    pub kind: Kind,
    dir: PathBuf,
    /// The floor's parent cgroup, and its services' scripts.
    floor: PathBuf,
    scripts: Vec<(String, PathBuf)>,
    daemon: Option<Child>,
    resmon: PathBuf,
    grace_secs: u64,
    stops: bool,
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        if ok()? {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    let path = dir.join(name);
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

impl Instance {
    /// Sets `kind` up in `dir` (created) with `services` and starts its
    /// daemon; returns once it takes commands.
    pub fn start(kind: Kind, dir: &Path, services: &[Service], s: &Settings) -> Result<Instance> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut me = Instance {
            kind,
            dir: dir.to_owned(),
            floor: PathBuf::new(),
            scripts: Vec::new(),
            daemon: None,
            resmon: s.resmon.clone(),
            grace_secs: s.grace_secs,
            stops: s.stops,
        };
        match kind {
            Kind::Resmon | Kind::ResmonNoCgroups => me.start_resmon(services)?,
            Kind::Runit => me.start_runit(services)?,
            Kind::S6 => me.start_s6(services)?,
            Kind::Supervisord | Kind::SupervisordGroup => me.start_supervisord(services)?,
            Kind::Pacemaker => me.write_cib(services)?,
            Kind::Floor => me.make_cgroups(services)?,
        }
        Ok(me)
    }

    /// The floor's cgroup for service `name`.
    fn floor_cgroup(&self, name: &str) -> PathBuf {
        self.floor.join(name)
    }

    fn make_cgroups(&mut self, services: &[Service]) -> Result<()> {
        let slug = self
            .dir
            .to_string_lossy()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        self.floor = own_cgroup()?.join(format!("bp-floor-{}-{slug:x}", std::process::id()));
        std::fs::create_dir(&self.floor)
            .with_context(|| format!("creating {}", self.floor.display()))?;
        if !self.floor.join("cgroup.kill").exists() {
            bail!(
                "{} has no cgroup.kill (kernel before 5.14?)",
                self.floor.display()
            );
        }
        for s in services {
            let dir = self.floor_cgroup(&s.name);
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            self.scripts.push((s.name.clone(), s.script.clone()));
        }
        Ok(())
    }

    fn spawn_daemon(&mut self, mut cmd: Command, what: &str) -> Result<()> {
        let log = log_file(&self.dir, "daemon.log")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.daemon = Some(child);
        Ok(())
    }

    /// Fails when the daemon has exited: it would never answer.
    fn check_daemon(&mut self) -> Result<()> {
        if let Some(child) = &mut self.daemon {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
                bail!(
                    "{} exited with {status}: {}",
                    self.kind.label(),
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                );
            }
        }
        Ok(())
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    fn resmon_socket(&self) -> PathBuf {
        self.dir.join("resmon.sock")
    }

    fn start_resmon(&mut self, services: &[Service]) -> Result<()> {
        let socket = self.resmon_socket();
        let mut config = format!(
            "[monitor]\nsocket = {:?}\nstate_dir = {:?}\ncgroups = \"{}\"\n\n[defaults]\n\
             {}restart_action = \"restart\"\n\
             restart_threshold = 1000000\nrestart_delay = \"0s\"\n",
            socket.display().to_string(),
            self.dir.join("state").display().to_string(),
            if self.kind == Kind::ResmonNoCgroups {
                "off"
            } else {
                "auto"
            },
            if self.stops {
                format!("pending_timeout = \"{}s\"\n", self.grace_secs)
            } else {
                String::new()
            },
        );
        for svc in services {
            write!(
                config,
                "\n[[resource]]\nname = \"{}\"\ntype = \"process\"\ncommand = [{:?}]\n\
                 autostart = {}\nstdout = \"null\"\nstderr = \"null\"\n",
                svc.name,
                svc.script.display().to_string(),
                svc.autostart
            )?;
        }
        let file = self.dir.join("resmon.toml");
        write(&file, &config)?;
        let mut cmd = Command::new(&self.resmon);
        cmd.args(["serve", "--config"])
            .arg(&file)
            .env("RESMON_LOG", "warn");
        self.spawn_daemon(cmd, "resmon serve")?;
        wait_for(
            "resmon serve opening its socket",
            Duration::from_secs(60),
            || {
                self.check_daemon()?;
                Ok(std::os::unix::net::UnixStream::connect(&socket).is_ok())
            },
        )
    }

    fn service_dirs(
        &self,
        root: &Path,
        services: &[Service],
        extra: &[(&str, String)],
    ) -> Result<()> {
        for svc in services {
            let d = root.join(&svc.name);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            std::os::unix::fs::symlink(&svc.script, d.join("run"))
                .with_context(|| format!("linking {}/run", d.display()))?;
            if !svc.autostart {
                write(&d.join("down"), "")?;
            }
            for (file, text) in extra {
                write(&d.join(file), text)?;
            }
        }
        Ok(())
    }

    fn wait_services(&mut self, root: &Path, services: &[Service], probe: &str) -> Result<()> {
        let limit = Duration::from_secs(30 + services.len() as u64 / 10);
        wait_for(
            &format!("{} supervising every service", self.kind.label()),
            limit,
            || {
                self.check_daemon()?;
                Ok(services
                    .iter()
                    .all(|s| root.join(&s.name).join(probe).exists()))
            },
        )
    }

    fn start_runit(&mut self, services: &[Service]) -> Result<()> {
        let root = self.dir.join("service");
        self.service_dirs(&root, services, &[])?;
        let mut cmd = Command::new("runsvdir");
        cmd.arg(&root);
        self.spawn_daemon(cmd, "runsvdir")?;
        // runsv opens supervise/ok once it takes commands.
        self.wait_services(&root, services, "supervise/ok")
    }

    fn start_s6(&mut self, services: &[Service]) -> Result<()> {
        let root = self.dir.join("scan");
        let kill_ms = (self.grace_secs * 1000).to_string();
        self.service_dirs(&root, services, &[("timeout-kill", kill_ms)])?;
        let mut cmd = Command::new("s6-svscan");
        cmd.args(["-c", &(services.len() * 2 + 100).to_string()])
            .arg(&root);
        self.spawn_daemon(cmd, "s6-svscan")?;
        // s6-supervise creates supervise/control once it takes commands.
        self.wait_services(&root, services, "supervise/control")
    }

    fn supervisord_conf(&self) -> PathBuf {
        self.dir.join("supervisord.conf")
    }

    fn start_supervisord(&mut self, services: &[Service]) -> Result<()> {
        let d = self.dir.display();
        let group = self.kind == Kind::SupervisordGroup;
        let mut conf = format!(
            "[unix_http_server]\nfile={d}/supervisor.sock\n\n\
             [supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
             childlogdir={d}\nloglevel=warn\nminfds={}\n\n\
             [rpcinterface:supervisor]\n\
             supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n",
            (services.len() * 4 + 200).max(1024)
        );
        for svc in services {
            write!(
                conf,
                "\n[program:{}]\ncommand={}\nautostart={}\nautorestart=true\n\
                 stopwaitsecs={}\nstopasgroup={group}\nkillasgroup={group}\n\
                 redirect_stderr=true\nstdout_logfile=NONE\n",
                svc.name,
                svc.script.display(),
                svc.autostart,
                self.grace_secs,
            )?;
        }
        let file = self.supervisord_conf();
        write(&file, &conf)?;
        let mut cmd = Command::new("supervisord");
        cmd.arg("-c").arg(&file);
        self.spawn_daemon(cmd, "supervisord")?;
        let socket = self.dir.join("supervisor.sock");
        wait_for(
            "supervisord opening its socket",
            Duration::from_secs(60),
            || {
                self.check_daemon()?;
                Ok(std::os::unix::net::UnixStream::connect(&socket).is_ok())
            },
        )
    }

    fn cib(&self) -> PathBuf {
        self.dir.join("cib.xml")
    }

    fn write_cib(&mut self, services: &[Service]) -> Result<()> {
        let mut prims = String::new();
        for svc in services {
            let n = &svc.name;
            write!(
                prims,
                r#"      <primitive id="{n}" class="ocf" provider="heartbeat" type="anything">
        <instance_attributes id="{n}-ia">
          <nvpair id="{n}-binfile" name="binfile" value="{}"/>
          <nvpair id="{n}-pidfile" name="pidfile" value="{}"/>
          <nvpair id="{n}-stop_timeout" name="stop_timeout" value="{}"/>
        </instance_attributes>
      </primitive>
"#,
                svc.script.display(),
                self.dir.join(format!("{n}.pid")).display(),
                self.grace_secs,
            )?;
        }
        write(
            &self.cib(),
            &format!(
                r#"<cib crm_feature_set="3.16.2" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config/>
    <nodes/>
    <resources>
{prims}    </resources>
    <constraints/>
  </configuration>
  <status/>
</cib>
"#
            ),
        )
    }

    fn command(&self, up: bool, name: &str) -> Command {
        let path = |sub: &str| self.dir.join(sub).join(name);
        match self.kind {
            Kind::Resmon | Kind::ResmonNoCgroups => {
                let mut c = Command::new(&self.resmon);
                c.arg("--socket").arg(self.resmon_socket()).args([
                    if up { "online" } else { "offline" },
                    name,
                    "--wait",
                ]);
                c
            }
            Kind::Runit => {
                let mut c = Command::new("sv");
                if up {
                    c.arg("up");
                } else {
                    c.args(["-w", &self.grace_secs.to_string(), "force-stop"]);
                }
                c.arg(path("service"));
                c
            }
            Kind::S6 => {
                let mut c = Command::new("s6-svc");
                if up {
                    c.arg("-u");
                } else {
                    c.args(["-wD", "-T", "60000", "-d"]);
                }
                c.arg(path("scan"));
                c
            }
            Kind::Supervisord | Kind::SupervisordGroup => {
                let mut c = Command::new("supervisorctl");
                c.arg("-c")
                    .arg(self.supervisord_conf())
                    .args([if up { "start" } else { "stop" }, name]);
                c
            }
            Kind::Pacemaker => {
                let mut c = Command::new("crm_resource");
                c.env("CIB_file", self.cib()).args([
                    if up { "--force-start" } else { "--force-stop" },
                    "-r",
                    name,
                ]);
                c
            }
            // Up: a shell joins the cgroup and `setsid -f` starts the
            // workload there, detached. Down: this program's floor stop.
            Kind::Floor if up => {
                let script = self
                    .scripts
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default();
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    // The workload must not hold the command's pipes open.
                    "echo $$ > \"$0/cgroup.procs\" && exec setsid -f \"$1\" </dev/null >/dev/null 2>&1",
                ])
                .arg(self.floor_cgroup(name))
                .arg(script);
                c
            }
            Kind::Floor => {
                let mut c = Command::new(std::env::current_exe().unwrap_or_default());
                c.arg(FLOOR_STOP).arg(self.floor_cgroup(name));
                c
            }
        }
    }

    /// The operator's command that brings `name` up (for runit and s6 it
    /// returns at once; the caller waits for the workload).
    pub fn up(&self, name: &str) -> Command {
        let mut c = self.command(true, name);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// The operator's command that stops `name` and returns once the tool
    /// considers it stopped.
    pub fn down(&self, name: &str) -> Command {
        let mut c = self.command(false, name);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 20 s). What it leaves
    /// behind is killed by the caller, by mark.
    pub fn shutdown(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            procs::kill(child.id(), rustix::process::Signal::TERM);
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown();
        if self.kind == Kind::Floor && !self.floor.as_os_str().is_empty() {
            // What is left was killed by mark; the cgroups go.
            for (name, _) in &self.scripts {
                let dir = self.floor_cgroup(name);
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                let _ = std::fs::remove_dir(&dir);
            }
            let _ = std::fs::remove_dir(&self.floor);
        }
    }
}

/// Removes the floor cgroups that benchmark process `pid` made (when it
/// died before it could).
pub fn remove_floor_cgroups(pid: u32) {
    let Ok(own) = own_cgroup() else { return };
    let prefix = format!("bp-floor-{pid}-");
    for e in std::fs::read_dir(&own).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        for sub in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            if sub.path().is_dir() {
                let _ = std::fs::write(sub.path().join("cgroup.kill"), "1");
                // Empty once its processes have exited: a moment after the kill.
                let end = Instant::now() + Duration::from_secs(5);
                while std::fs::remove_dir(sub.path()).is_err() && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

/// The argument that makes this program the floor's stop command.
pub const FLOOR_STOP: &str = "--floor-stop";

/// This process's cgroup v2 directory (from `/proc/self/mountinfo` and
/// `/proc/self/cgroup`), where the floor makes its cgroups.
fn own_cgroup() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = info
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split(' ').nth(4).map(PathBuf::from))?
        })
        .context("cgroup v2 is not mounted")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line in /proc/self/cgroup")?;
    let dir = mount.join(path.trim_start_matches('/'));
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    Ok(dir)
}

/// The floor's stop of the workload in cgroup `dir`: `cgroup.kill`, then
/// wait (poll on `cgroup.events`) for `populated 0`, then for every pid it
/// held to be reaped.
pub fn floor_stop(dir: &Path) -> Result<()> {
    use rustix::event::{poll, PollFd, PollFlags};
    let pids: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let events = std::fs::File::open(dir.join("cgroup.events"))?;
    std::fs::write(dir.join("cgroup.kill"), "1")?;
    loop {
        let text = std::fs::read_to_string(dir.join("cgroup.events"))?;
        if text.lines().any(|l| l == "populated 0") {
            break;
        }
        // The kernel wakes pollers of cgroup.events when it changes.
        let mut fds = [PollFd::new(&events, PollFlags::PRI)];
        let _ = poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            }),
        );
    }
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}
