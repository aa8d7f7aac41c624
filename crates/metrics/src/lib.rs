//! resmon's metrics: the series the monitor's parts record as things
//! happen, the series read off the monitor's state at each scrape, and
//! their encoding in the Prometheus text format (0.0.4) and in OpenMetrics.
//!
//! What counts events (calls, stops, failures, probes, plugin hosts, API
//! requests, lease renewals, fences) lives in one process-wide [`Metrics`]
//! ([`global`]): the driver, the `process` type's probes, the plugin
//! client and the cluster controller each record into it where the event
//! happens. What describes the present (a resource's state, the countdown
//! of a call in flight, the lease time left) is not kept up to date at all:
//! the daemon fills a [`Scrape`] from its own state when `/metrics` is
//! asked, so an idle monitor spends nothing on metrics and no gauge can go
//! stale. `docs/metrics.md` lists every series.

mod process;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A label set: names and values.
type Labels<const N: usize> = [(&'static str, String); N];
type Histograms<const N: usize> = Family<Labels<N>, Histogram, fn() -> Histogram>;

/// Bucket bounds (seconds) of every duration histogram: from a millisecond
/// (a `looks_alive` answered from memory) to five minutes (the default
/// `deadlock_timeout`).
pub const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Which resource a series is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Who {
    pub resource: String,
    pub group: String,
    pub type_name: String,
}

impl Who {
    fn labels(&self) -> [(&'static str, &str); 3] {
        [
            ("resource", &self.resource),
            ("group", &self.group),
            ("type", &self.type_name),
        ]
    }

    fn labels_and<'a>(&'a self, key: &'static str, value: &'a str) -> [(&'static str, &'a str); 4] {
        let [r, g, t] = self.labels();
        [r, g, t, (key, value)]
    }

    /// The same, owned, for the recorded families.
    fn owned<const N: usize>(labels: [(&'static str, &str); N]) -> Labels<N> {
        labels.map(|(k, v)| (k, v.to_owned()))
    }
}

/// The entry points whose calls are timed.
const ENTRIES: [&str; 5] = ["online", "offline", "looks_alive", "is_alive", "terminate"];

/// See [`Metrics::call_timers`].
#[derive(Clone, Debug)]
pub struct CallTimers {
    type_name: String,
    by_entry: [(&'static str, Histogram); 5],
}

impl CallTimers {
    /// A call of `entry` returned after `took`.
    pub fn observe(&self, entry: &str, took: Duration) {
        match self.by_entry.iter().find(|(e, _)| *e == entry) {
            Some((_, h)) => h.observe(took.as_secs_f64()),
            None => global().call(entry, &self.type_name, took),
        }
    }
}

/// Why a plugin host was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostEnd {
    /// The monitor killed it: a call in it did not return in time.
    Hang,
    /// It died by itself, or broke the protocol.
    Crash,
    /// Its last resource was closed: not a restart.
    Closed,
}

/// The counters and histograms of the whole process.
#[derive(Debug)]
pub struct Metrics {
    calls: Histograms<2>,
    stops: Family<Labels<4>, Counter>,
    stop_seconds: Histograms<2>,
    survivors: Family<Labels<3>, Counter>,
    failures: Family<Labels<4>, Counter>,
    probe_seconds: Histograms<1>,
    probe_failures: Family<Labels<1>, Counter>,
    hosts: Gauge,
    host_ends: Family<Labels<1>, Counter>,
    culprits: Counter,
    api_requests: Family<Labels<2>, Counter>,
    ownership_changes: Family<Labels<1>, Counter>,
    fences: Family<Labels<1>, Counter>,
    alerts: Family<Labels<2>, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            calls: Family::new_with_constructor(histogram),
            stops: Family::default(),
            stop_seconds: Family::new_with_constructor(histogram),
            survivors: Family::default(),
            failures: Family::default(),
            probe_seconds: Family::new_with_constructor(histogram),
            probe_failures: Family::default(),
            hosts: Gauge::default(),
            host_ends: Family::default(),
            culprits: Counter::default(),
            api_requests: Family::default(),
            ownership_changes: Family::default(),
            fences: Family::default(),
            alerts: Family::default(),
        }
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// An entry-point call returned after `took`.
    pub fn call(&self, entry: &str, type_name: &str, took: Duration) {
        self.calls
            .get_or_create(&[("entry", entry.to_owned()), ("type", type_name.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// The call-duration histograms of one resource type, looked up once:
    /// a thousand `looks_alive` a second then cost no label lookup each.
    pub fn call_timers(&self, type_name: &str) -> CallTimers {
        let of = |entry: &'static str| {
            let labels = [("entry", entry.to_owned()), ("type", type_name.to_owned())];
            (entry, self.calls.get_or_create(&labels).clone())
        };
        CallTimers {
            type_name: type_name.to_owned(),
            by_entry: ENTRIES.map(of),
        }
    }

    /// A stop ended by `rung` of the termination ladder, `took` after its
    /// first rung began.
    pub fn stop(&self, who: &Who, rung: &str, took: Duration) {
        self.stops
            .get_or_create(&Who::owned(who.labels_and("rung", rung)))
            .inc();
        self.stop_seconds
            .get_or_create(&[("type", who.type_name.clone()), ("rung", rung.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// Drops every series recorded of a resource that is gone for good (a
    /// reload removed it and it is released): `rungs` and `classes` are
    /// every rung and failure class it may have been counted under.
    pub fn forget(&self, who: &Who, rungs: &[&str], classes: &[&str]) {
        for rung in rungs {
            self.stops.remove(&Who::owned(who.labels_and("rung", rung)));
        }
        for class in classes {
            self.failures
                .remove(&Who::owned(who.labels_and("class", class)));
        }
        self.survivors.remove(&Who::owned(who.labels()));
    }

    /// Processes of the resource were still running after its stop ended.
    pub fn survivors(&self, who: &Who, n: u64) {
        self.survivors
            .get_or_create(&Who::owned(who.labels()))
            .inc_by(n);
    }

    /// The resource failed; `class` says how.
    pub fn failure(&self, who: &Who, class: &str) {
        self.failures
            .get_or_create(&Who::owned(who.labels_and("class", class)))
            .inc();
    }

    /// A probe (`tcp`, `http`, `exec`) ran for `took`; `ok` is its verdict.
    pub fn probe(&self, kind: &str, took: Duration, ok: bool) {
        let labels = [("probe", kind.to_owned())];
        self.probe_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.probe_failures.get_or_create(&labels).inc();
        }
    }

    /// A plugin host process started.
    pub fn host_started(&self) {
        self.hosts.inc();
    }

    /// A plugin host process is gone, and why.
    pub fn host_ended(&self, end: HostEnd) {
        self.hosts.dec();
        let cause = match end {
            HostEnd::Hang => "hang",
            HostEnd::Crash => "crash",
            HostEnd::Closed => return,
        };
        self.host_ends
            .get_or_create(&[("cause", cause.to_owned())])
            .inc();
    }

    /// A resource that hung its host gets a host of its own from now on.
    pub fn culprit(&self) {
        self.culprits.inc();
    }

    /// The API answered a request to `route` (its pattern, never the path
    /// with names in it) with `status`.
    pub fn api_request(&self, route: &str, status: u16) {
        self.api_requests
            .get_or_create(&[("route", route.to_owned()), ("status", status.to_string())])
            .inc();
    }

    /// Cluster mode: this node took (`acquired`) or gave up a group.
    pub fn ownership_change(&self, acquired: bool) {
        let change = if acquired { "acquired" } else { "released" };
        self.ownership_changes
            .get_or_create(&[("change", change.to_owned())])
            .inc();
    }

    /// Cluster mode: this node fenced itself (killed what it ran); `cause`
    /// says why (e.g. `lease_lost`, `fence_guard`).
    pub fn fence(&self, cause: &str) {
        self.fences
            .get_or_create(&[("cause", cause.to_owned())])
            .inc();
    }

    /// Alert hook `name`: `n` alerts `delivered`, `failed` (given up
    /// after its retries) or `dropped` (its queue was full).
    pub fn alert(&self, name: &str, result: &str, n: u64) {
        self.alerts
            .get_or_create(&[("alert", name.to_owned()), ("result", result.to_owned())])
            .inc_by(n);
    }

    fn register(&self, reg: &mut Registry) {
        reg.register_with_unit(
            "resmon_call_duration",
            "Duration of entry-point calls that returned, by entry point and resource type",
            Unit::Seconds,
            self.calls.clone(),
        );
        reg.register(
            "resmon_stops",
            "Stops that ended, by the rung of the termination ladder that ended them (offline, terminate, forced)",
            self.stops.clone(),
        );
        reg.register_with_unit(
            "resmon_stop_duration",
            "Duration of stops, from their first rung to the resource being down, by type and rung",
            Unit::Seconds,
            self.stop_seconds.clone(),
        );
        reg.register(
            "resmon_stop_survivors",
            "Processes found still running in a resource's container after its stop ended (should stay 0)",
            self.survivors.clone(),
        );
        reg.register(
            "resmon_resource_failures",
            "Failures of a resource, by class (online, timeout, health, notice, lost, open)",
            self.failures.clone(),
        );
        reg.register_with_unit(
            "resmon_probe_duration",
            "Duration of health and readiness probes of process resources, by probe type",
            Unit::Seconds,
            self.probe_seconds.clone(),
        );
        reg.register(
            "resmon_probe_failures",
            "Probes that said unhealthy, by probe type",
            self.probe_failures.clone(),
        );
        reg.register(
            "resmon_plugin_hosts",
            "Plugin host processes running",
            self.hosts.clone(),
        );
        reg.register(
            "resmon_plugin_host_restarts",
            "Plugin hosts that ended and are replaced at their next call, by cause (hang: killed by the monitor; crash)",
            self.host_ends.clone(),
        );
        reg.register(
            "resmon_plugin_culprits",
            "Resources moved to a host of their own after a call of theirs hung their host",
            self.culprits.clone(),
        );
        reg.register(
            "resmon_api_requests",
            "API requests answered, by route and HTTP status",
            self.api_requests.clone(),
        );
        reg.register(
            "resmon_alerts",
            "Alerts of each [[alert]] hook, by result: delivered, failed (given up after its retries) or dropped (its queue was full)",
            self.alerts.clone(),
        );
        reg.register(
            "resmon_cluster_ownership_changes",
            "Cluster mode: groups this node acquired or released",
            self.ownership_changes.clone(),
        );
        reg.register(
            "resmon_cluster_fences",
            "Cluster mode: times this node killed the groups it ran, by cause",
            self.fences.clone(),
        );
    }
}

/// One resource as it is at the scrape.
#[derive(Clone, Debug, Default)]
pub struct ResourceRow {
    pub who: Who,
    /// Its state's name (one of [`Scrape::state_names`]).
    pub state: &'static str,
    /// Restarts since it was configured.
    pub restarts: u64,
    /// Whether restarts count against `restart_threshold` now.
    pub in_restart_window: bool,
    /// While online: since when, in seconds since the Unix epoch.
    pub online_since: Option<f64>,
    /// While online with readiness checks: whether it is ready.
    pub ready: Option<bool>,
    /// In maintenance.
    pub maintenance: bool,
}

/// An entry-point call in flight.
#[derive(Clone, Debug, Default)]
pub struct CallRow {
    pub resource: String,
    pub entry: String,
    pub type_name: String,
    /// Seconds left before the monitor escalates (negative when overdue).
    pub seconds_left: f64,
}

/// Cluster mode, as this node sees it.
#[derive(Clone, Debug, Default)]
pub struct ClusterRow {
    pub member: bool,
    /// Seconds until the lease expires unless renewed.
    pub lease_seconds_left: Option<f64>,
    /// The groups this node owns, each with its fencing token.
    pub owned: Vec<(String, u64)>,
    /// The fence guard is armed (it kills the groups if the monitor dies).
    pub guard_armed: bool,
    /// Lease renewals etcd acknowledged, since the monitor started.
    pub renewals: u64,
    /// Lease renewals that failed (went unanswered, or could not be sent).
    pub renewal_failures: u64,
}

/// The resources' rows at one generation of the monitor's state.
#[derive(Clone, Debug, Default)]
pub struct Rows {
    /// Changes whenever anything the rows show changes.
    pub generation: u64,
    /// The rows are right until then even without a new generation (a
    /// restart-threshold window ends); `None`: until the next generation.
    pub valid_until: Option<Instant>,
    /// Every state's name, for the one-series-per-state gauge.
    pub state_names: Vec<&'static str>,
    pub resources: Vec<ResourceRow>,
}

/// What the monitor's state says at the scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// The resources, unless the generation the scrape asked with is
    /// still the current one (see [`Cache::known`]).
    pub rows: Option<Rows>,
    /// The exit code of each resource whose main process ended once. Read
    /// at every scrape: a process may end a moment after its state changed.
    pub exit_codes: Vec<(Who, i32)>,
    /// Lines of output each resource's log could not take, where any were
    /// lost. Read at every scrape.
    pub output_dropped: Vec<(Who, u64)>,
    pub calls: Vec<CallRow>,
    /// How long the scrape's request waited for the event loop.
    pub loop_lag: Duration,
    pub cluster: Option<ClusterRow>,
}

/// The text formats `/metrics` answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header asks for it, else Prometheus.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    fn index(self) -> usize {
        match self {
            Format::Prometheus => 0,
            Format::OpenMetrics => 1,
        }
    }

    /// Appends `reg`'s families (no `# EOF`).
    fn write(self, out: &mut String, reg: &Registry) -> Result<(), std::fmt::Error> {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(out, reg),
            Format::OpenMetrics => prometheus_client::encoding::text::encode_registry(out, reg),
        }
    }
}

/// The per-resource series of the last rows, encoded once per generation
/// and format: most scrapes of an idle monitor (where nothing changed)
/// copy them instead of encoding a thousand resources again.
#[derive(Debug, Default)]
pub struct Cache {
    block: Mutex<Option<Block>>,
}

#[derive(Debug)]
struct Block {
    rows: Rows,
    text: [Option<Arc<String>>; 2],
}

impl Cache {
    /// The generation to ask the monitor for: the cached one while it is
    /// still valid, so that an unchanged state sends no rows.
    pub fn known(&self) -> Option<u64> {
        let block = lock(&self.block);
        let rows = &block.as_ref()?.rows;
        match rows.valid_until {
            Some(until) if Instant::now() >= until => None,
            _ => Some(rows.generation),
        }
    }

    /// Every series: the recorded ones of [`global`], the scrape's, and
    /// the process's own (CPU, memory, descriptors).
    pub fn encode(&self, format: Format, scrape: Scrape) -> Result<String, std::fmt::Error> {
        let parts = self.encode_parts(format, scrape)?;
        Ok(format!("{}{}", parts.resources, parts.rest))
    }

    /// The same in two parts to send one after the other, so that the
    /// cached one is not copied.
    pub fn encode_parts(&self, format: Format, scrape: Scrape) -> Result<Encoded, std::fmt::Error> {
        let resources = self.resources(format, scrape.rows.clone())?;
        let mut reg = Registry::default();
        reg.register(
            "resmon_build",
            "The running resmon's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        global().register(&mut reg);
        reg.register_collector(Box::new(Present(scrape)));
        reg.register_collector(Box::new(process::Process));
        let mut rest = String::with_capacity(32 * 1024);
        format.write(&mut rest, &reg)?;
        if format == Format::OpenMetrics {
            prometheus_client::encoding::text::encode_eof(&mut rest)?;
        }
        Ok(Encoded { resources, rest })
    }

    /// The per-resource series: of `rows` when given (and kept), else of
    /// the kept ones.
    fn resources(
        &self,
        format: Format,
        rows: Option<Rows>,
    ) -> Result<Arc<String>, std::fmt::Error> {
        let mut block = lock(&self.block);
        if let Some(rows) = rows {
            *block = Some(Block {
                rows,
                text: [None, None],
            });
        }
        let Some(b) = block.as_mut() else {
            return Ok(Arc::default());
        };
        if let Some(text) = &b.text[format.index()] {
            return Ok(text.clone());
        }
        let mut reg = Registry::default();
        reg.register_collector(Box::new(Resources(b.rows.clone())));
        // About 80 bytes a line, eight lines a resource.
        let mut text = String::with_capacity(1024 + 640 * b.rows.resources.len());
        format.write(&mut text, &reg)?;
        let text = Arc::new(text);
        b.text[format.index()] = Some(text.clone());
        Ok(text)
    }
}

/// The answer to a scrape, in two parts: the per-resource series (shared
/// with the cache) and the rest, in this order.
#[derive(Debug)]
pub struct Encoded {
    pub resources: Arc<String>,
    pub rest: String,
}

/// Locks `m`, also when a thread panicked holding it (the data is only
/// ever replaced whole).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything at once, without a cache: for tests and one-off use.
pub fn encode(format: Format, scrape: Scrape) -> Result<String, std::fmt::Error> {
    Cache::default().encode(format, scrape)
}

/// Writes one family of constant gauges.
pub(crate) fn gauges<S, N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl Iterator<Item = (S, N)>,
) -> Result<(), std::fmt::Error>
where
    S: prometheus_client::encoding::EncodeLabelSet,
    N: prometheus_client::encoding::EncodeGaugeValue,
{
    // Written with a full stop, as the registry writes the others' help.
    let help = format!("{help}.");
    let mut family = encoder.encode_descriptor(name, &help, unit, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The per-resource series that change only with the state.
#[derive(Debug)]
struct Resources(Rows);

impl Collector for Resources {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let res = &self.0.resources;
        gauges(
            &mut enc,
            "resmon_resources_configured",
            "Resources in the configuration",
            None,
            std::iter::once(([("", ""); 0], res.len())),
        )?;
        gauges(
            &mut enc,
            "resmon_resource_state",
            "The resource's state: 1 for the state it is in, 0 for the others",
            None,
            res.iter().flat_map(|r| {
                self.0.state_names.iter().map(move |&s| {
                    let v = i64::from(s == r.state);
                    (r.who.labels_and("state", s), v)
                })
            }),
        )?;
        {
            let mut family = enc.encode_descriptor(
                "resmon_resource_restarts",
                "Restarts of the resource by the monitor since it was configured.",
                None,
                MetricType::Counter,
            )?;
            for r in res {
                ConstCounter::new(r.restarts).encode(family.encode_family(&r.who.labels())?)?;
            }
        }
        gauges(
            &mut enc,
            "resmon_resource_in_restart_window",
            "1 while restarts of the resource count against its restart_threshold (within restart_period of the last one)",
            None,
            res.iter()
                .map(|r| (r.who.labels(), i64::from(r.in_restart_window))),
        )?;
        gauges(
            &mut enc,
            "resmon_resource_online_since_timestamp",
            "While online: when the resource came online, in seconds since the Unix epoch",
            Some(&Unit::Seconds),
            res.iter()
                .filter_map(|r| Some((r.who.labels(), r.online_since?))),
        )?;
        gauges(
            &mut enc,
            "resmon_resource_ready",
            "While online with a readiness probe: 1 when ready, 0 when not (its dependents wait)",
            None,
            res.iter()
                .filter_map(|r| Some((r.who.labels(), i64::from(r.ready?)))),
        )?;
        gauges(
            &mut enc,
            "resmon_resource_maintenance",
            "1 while the resource is in maintenance: its checks run, no failure acts",
            None,
            res.iter()
                .map(|r| (r.who.labels(), i64::from(r.maintenance))),
        )
    }
}

/// The series read afresh at every scrape.
#[derive(Debug)]
struct Present(Scrape);

impl Collector for Present {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        gauges(
            &mut enc,
            "resmon_resource_last_exit_code",
            "Exit code of the resource's main process when it last ended (process resources)",
            None,
            s.exit_codes.iter().map(|(who, code)| (who.labels(), *code)),
        )?;
        gauges(
            &mut enc,
            "resmon_output_dropped_lines",
            "Lines of the resource's output its log could not take (a full disk), as its log relay counted them",
            None,
            s.output_dropped
                .iter()
                .map(|(who, n)| (who.labels(), i64::try_from(*n).unwrap_or(i64::MAX))),
        )?;
        let mut in_flight: Vec<([(&str, &str); 2], i64)> = Vec::new();
        for c in &s.calls {
            let labels = [("entry", c.entry.as_str()), ("type", c.type_name.as_str())];
            match in_flight.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, n)) => *n += 1,
                None => in_flight.push((labels, 1)),
            }
        }
        gauges(
            &mut enc,
            "resmon_calls_in_flight",
            "Entry-point calls in progress, by entry point and resource type",
            None,
            in_flight.into_iter(),
        )?;
        gauges(
            &mut enc,
            "resmon_call_escalation",
            "Seconds left before the monitor escalates a call in flight (to terminate, or to the forced kill); negative when overdue",
            Some(&Unit::Seconds),
            s.calls.iter().map(|c| {
                let labels = [
                    ("resource", c.resource.as_str()),
                    ("entry", c.entry.as_str()),
                    ("type", c.type_name.as_str()),
                ];
                (labels, c.seconds_left)
            }),
        )?;
        gauges(
            &mut enc,
            "resmon_event_loop_lag",
            "How long this scrape's request waited for the monitor's event loop",
            Some(&Unit::Seconds),
            std::iter::once(([("", ""); 0], s.loop_lag.as_secs_f64())),
        )?;
        if let Some(c) = &s.cluster {
            cluster(&mut enc, c)?;
        }
        Ok(())
    }
}

fn cluster(enc: &mut DescriptorEncoder, c: &ClusterRow) -> Result<(), std::fmt::Error> {
    let none = || [("", ""); 0];
    gauges(
        enc,
        "resmon_cluster_member",
        "Cluster mode: 1 while this node holds a live lease and is a member",
        None,
        std::iter::once((none(), i64::from(c.member))),
    )?;
    gauges(
        enc,
        "resmon_cluster_lease_left",
        "Cluster mode: seconds until this node's lease expires unless renewed",
        Some(&Unit::Seconds),
        c.lease_seconds_left.map(|s| (none(), s)).into_iter(),
    )?;
    for (name, help, value) in [
        (
            "resmon_cluster_lease_renewals",
            "Cluster mode: lease renewals etcd acknowledged.",
            c.renewals,
        ),
        (
            "resmon_cluster_lease_renewal_failures",
            "Cluster mode: lease renewals that went unanswered or could not be sent.",
            c.renewal_failures,
        ),
    ] {
        ConstCounter::new(value).encode(enc.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?)?;
    }
    gauges(
        enc,
        "resmon_cluster_groups_owned",
        "Cluster mode: groups this node owns",
        None,
        std::iter::once((none(), c.owned.len())),
    )?;
    gauges(
        enc,
        "resmon_cluster_fencing_token",
        "Cluster mode: the fencing token of each group this node owns",
        None,
        c.owned.iter().map(|(g, t)| ([("group", g.as_str())], *t)),
    )?;
    gauges(
        enc,
        "resmon_cluster_fence_guard_armed",
        "Cluster mode: 1 while the fence guard is armed (it kills the owned groups if the monitor dies)",
        None,
        std::iter::once((none(), i64::from(c.guard_armed))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str) -> Who {
        Who {
            resource: name.into(),
            group: "g".into(),
            type_name: "process".into(),
        }
    }

    fn rows(generation: u64, state: &'static str) -> Rows {
        Rows {
            generation,
            valid_until: None,
            state_names: vec!["offline", "online", "failed"],
            resources: vec![ResourceRow {
                who: who("web"),
                state,
                restarts: 2,
                in_restart_window: true,
                online_since: Some(1_700_000_000.5),
                ready: Some(false),
                maintenance: true,
            }],
        }
    }

    fn scrape() -> Scrape {
        Scrape {
            rows: Some(rows(1, "online")),
            exit_codes: vec![(who("web"), 3)],
            output_dropped: vec![(who("web"), 12)],
            calls: vec![CallRow {
                resource: "web".into(),
                entry: "is_alive".into(),
                type_name: "process".into(),
                seconds_left: -1.5,
            }],
            loop_lag: Duration::from_millis(2),
            cluster: Some(ClusterRow {
                member: true,
                lease_seconds_left: Some(1.25),
                owned: vec![("g".into(), 7)],
                guard_armed: true,
                renewals: 12,
                renewal_failures: 1,
            }),
        }
    }

    /// The sample lines (not comments) of `text` that start with `name`.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(name))
            .collect()
    }

    #[test]
    fn the_scrape_is_one_series_per_state_and_reading() {
        let text = encode(Format::Prometheus, scrape()).unwrap();
        let state = samples(&text, "resmon_resource_state{");
        assert_eq!(state.len(), 3, "{text}");
        assert!(state.contains(
            &r#"resmon_resource_state{resource="web",group="g",type="process",state="online"} 1"#
        ));
        assert!(state.contains(
            &r#"resmon_resource_state{resource="web",group="g",type="process",state="failed"} 0"#
        ));
        for line in [
            r#"resmon_resource_restarts_total{resource="web",group="g",type="process"} 2"#,
            r#"resmon_resource_last_exit_code{resource="web",group="g",type="process"} 3"#,
            r#"resmon_output_dropped_lines{resource="web",group="g",type="process"} 12"#,
            r#"resmon_resource_in_restart_window{resource="web",group="g",type="process"} 1"#,
            r#"resmon_resource_ready{resource="web",group="g",type="process"} 0"#,
            r#"resmon_resource_maintenance{resource="web",group="g",type="process"} 1"#,
            r#"resmon_resource_online_since_timestamp_seconds{resource="web",group="g",type="process"} 1700000000.5"#,
            r#"resmon_call_escalation_seconds{resource="web",entry="is_alive",type="process"} -1.5"#,
            r#"resmon_calls_in_flight{entry="is_alive",type="process"} 1"#,
            r#"resmon_cluster_fencing_token{group="g"} 7"#,
            "resmon_cluster_lease_left_seconds 1.25",
            "resmon_cluster_fence_guard_armed 1",
            "resmon_cluster_lease_renewals_total 12",
            "resmon_cluster_lease_renewal_failures_total 1",
            "resmon_resources_configured 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE resmon_resource_restarts_total counter"));
        assert!(!text.contains("# EOF"), "the Prometheus format has no EOF");
    }

    #[test]
    fn recorded_series_and_the_process_are_encoded_in_both_formats() {
        let m = global();
        let w = who("db");
        m.stop(&w, "forced", Duration::from_millis(1500));
        m.failure(&w, "health");
        m.call("online", "process", Duration::from_millis(3));
        m.probe("tcp", Duration::from_millis(1), false);
        m.api_request("/v1/resources", 200);
        let prom = encode(Format::Prometheus, Scrape::default()).unwrap();
        for line in [
            r#"resmon_stops_total{resource="db",group="g",type="process",rung="forced"} 1"#,
            r#"resmon_resource_failures_total{resource="db",group="g",type="process",class="health"} 1"#,
            r#"resmon_stop_duration_seconds_bucket{type="process",rung="forced",le="2.5"} 1"#,
            r#"resmon_probe_failures_total{probe="tcp"} 1"#,
            r#"resmon_api_requests_total{route="/v1/resources",status="200"} 1"#,
        ] {
            assert!(prom.lines().any(|l| l == line), "no {line:?} in\n{prom}");
        }
        assert!(prom.contains(&format!(
            "resmon_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert_eq!(samples(&prom, name).len(), 1, "{name} in\n{prom}");
        }
        let om = encode(Format::OpenMetrics, Scrape::default()).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE resmon_stops counter"), "{om}");
        assert!(
            om.contains("# UNIT resmon_stop_duration_seconds seconds"),
            "{om}"
        );
    }

    #[test]
    fn unchanged_rows_come_from_the_cache_until_their_generation_or_window_ends() {
        let cache = Cache::default();
        assert_eq!(cache.known(), None, "nothing cached yet");
        let state = |text: &str, s: &str| {
            sample_of(
                text,
                &format!(
                    r#"resmon_resource_state{{resource="web",group="g",type="process",state="{s}"}}"#
                ),
            )
        };
        let first = cache.encode(Format::Prometheus, scrape()).unwrap();
        assert_eq!(state(&first, "online"), Some(1.0));
        assert_eq!(cache.known(), Some(1));
        // The loop sent no rows: the cached ones are shown, in either format.
        let unchanged = Scrape {
            rows: None,
            ..scrape()
        };
        let again = cache.encode(Format::Prometheus, unchanged.clone()).unwrap();
        assert_eq!(state(&again, "online"), Some(1.0));
        let om = cache.encode(Format::OpenMetrics, unchanged).unwrap();
        assert!(
            om.contains(r#"state="online"} 1"#) && om.ends_with("# EOF\n"),
            "{om}"
        );
        // A new generation replaces them.
        let failed = Scrape {
            rows: Some(rows(2, "failed")),
            ..scrape()
        };
        let text = cache.encode(Format::Prometheus, failed).unwrap();
        assert_eq!(state(&text, "online"), Some(0.0));
        assert_eq!(state(&text, "failed"), Some(1.0));
        assert_eq!(cache.known(), Some(2));
        // A window that ended makes the cache ask for rows again.
        let mut ending = rows(3, "online");
        ending.valid_until = Some(Instant::now());
        let ended = Scrape {
            rows: Some(ending),
            ..scrape()
        };
        cache.encode(Format::Prometheus, ended).unwrap();
        assert_eq!(cache.known(), None);
    }

    fn sample_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn accept_chooses_the_format() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
    }
}
