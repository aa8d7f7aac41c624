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
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Resmon,
        Kind::ResmonNoCgroups,
        Kind::Runit,
        Kind::S6,
        Kind::Supervisord,
        Kind::SupervisordGroup,
        Kind::Pacemaker,
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
        }
        Ok(me)
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
    }
}
