//! docs/metrics.md lists exactly the series `/metrics` answers, with their
//! types, and the shipped alert rules and Grafana dashboard use no other.

use resmon_metrics::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const DOC: &str = include_str!("../../../docs/metrics.md");
const ALERTS: &str = include_str!("../../../contrib/prometheus/resmon-alerts.yml");
const DASHBOARD: &str = include_str!("../../../contrib/grafana/resmon-dashboard.json");

/// `name -> type` of every row of the doc's tables.
fn documented() -> BTreeMap<String, String> {
    DOC.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.get(2)?;
            (name.starts_with("resmon_") || name.starts_with("process_"))
                .then(|| (name.to_owned(), kind.to_string()))
        })
        .collect()
}

/// Every family recorded and read at a scrape, each with a sample.
fn everything() -> String {
    let m = global();
    let who = Who {
        resource: "web".into(),
        group: "g".into(),
        type_name: "process".into(),
    };
    m.call("online", "process", Duration::from_millis(2));
    m.stop(&who, "offline", Duration::from_millis(5));
    m.survivors(&who, 1);
    m.failure(&who, "health");
    m.probe("tcp", Duration::from_millis(1), false);
    m.host_started();
    m.host_ended(HostEnd::Hang);
    m.culprit();
    m.api_request("/metrics", 200);
    m.ownership_change(true);
    m.fence("lease_lost");
    m.alert("pager", "delivered", 1);
    let scrape = Scrape {
        rows: Some(Rows {
            generation: 1,
            valid_until: None,
            state_names: vec!["offline", "online"],
            resources: vec![ResourceRow {
                who: who.clone(),
                state: "online",
                restarts: 1,
                in_restart_window: true,
                online_since: Some(1.0),
                ready: Some(true),
                maintenance: false,
            }],
        }),
        exit_codes: vec![(who.clone(), 1)],
        output_dropped: vec![(who, 5)],
        calls: vec![CallRow {
            resource: "web".into(),
            entry: "is_alive".into(),
            type_name: "process".into(),
            seconds_left: 1.0,
        }],
        loop_lag: Duration::from_millis(1),
        cluster: Some(ClusterRow {
            member: true,
            lease_seconds_left: Some(1.0),
            owned: vec![("g".into(), 3)],
            guard_armed: true,
            renewals: 1,
            renewal_failures: 0,
        }),
    };
    encode(Format::Prometheus, scrape).unwrap()
}

/// The series names an expression uses: words starting `resmon_` or
/// `process_`, a histogram's `_bucket`, `_sum` and `_count` taken off.
fn used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices(['r', 'p']) {
        let rest = &text[i..];
        if !(rest.starts_with("resmon_") || rest.starts_with("process_")) {
            continue;
        }
        if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        out.insert(base.to_owned());
    }
    out
}

#[test]
fn every_series_answered_is_documented_with_its_type_and_no_other() {
    let text = everything();
    let answered: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect();
    let documented = documented();
    for (name, kind) in &answered {
        let doc = documented.get(name).map(String::as_str);
        // The info metric is written as a gauge in this format.
        let want = if name == "resmon_build_info" {
            "gauge"
        } else {
            kind
        };
        assert_eq!(
            doc,
            Some(want),
            "{name} ({kind}) is answered but docs/metrics.md says {doc:?}"
        );
    }
    for name in documented.keys() {
        assert!(
            answered.contains_key(name),
            "docs/metrics.md lists {name}, which /metrics does not answer:\n{text}"
        );
    }
}

#[test]
fn alerts_and_dashboard_use_only_documented_series() {
    let documented = documented();
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 20, "{exprs:?}");
    for (what, text) in [
        ("the alert rules", ALERTS.to_string()),
        ("the dashboard", exprs.join("\n")),
    ] {
        let names = used(&text);
        assert!(!names.is_empty());
        for name in names {
            assert!(
                documented.contains_key(&name),
                "{what} use {name}, which docs/metrics.md does not list"
            );
        }
    }
    // Every alert the doc names is in the rules file.
    for l in DOC.lines() {
        if let Some(alert) = l
            .strip_prefix("| `Resmon")
            .and_then(|r| r.split('`').next())
        {
            assert!(
                ALERTS.contains(&format!("- alert: Resmon{alert}\n")),
                "Resmon{alert} is in docs/metrics.md but not in the rules"
            );
        }
    }
}
