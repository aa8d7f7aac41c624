//! The placement rules, one table row per rule: who may take a group and
//! in which order, failback windows and failover thresholds.

use resmon_cluster::placement::{
    failback_to, line_up, local_minute, may_fail_over, recent_failovers, Exclusion, Line, Rules,
    Situation, Window,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn set<'a>(nodes: &[&'a str]) -> BTreeSet<&'a str> {
    nodes.iter().copied().collect()
}

fn live<'a>(nodes: &[&'a str]) -> Situation<'a> {
    Situation {
        live: set(nodes),
        ..Situation::default()
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

struct Row<'a> {
    what: &'a str,
    rules: Rules,
    situation: Situation<'a>,
    line: &'a [&'a str],
}

#[test]
fn the_line_follows_each_rule() {
    let preferred = Rules {
        preferred_nodes: names(&["c", "b"]),
        ..Rules::default()
    };
    let rows = [
        Row {
            what: "preferred nodes first, in their order",
            rules: preferred.clone(),
            situation: live(&["a", "b", "c"]),
            line: &["c", "b", "a"],
        },
        Row {
            what: "a preferred node that is not live is skipped",
            rules: preferred.clone(),
            situation: live(&["a", "b"]),
            line: &["b", "a"],
        },
        Row {
            what: "a move target comes before the preferred nodes",
            rules: preferred.clone(),
            situation: Situation {
                target: Some("a"),
                ..live(&["a", "b", "c"])
            },
            line: &["a", "c", "b"],
        },
        Row {
            what: "a target that is not live is ignored",
            rules: preferred.clone(),
            situation: Situation {
                target: Some("z"),
                ..live(&["a", "b", "c"])
            },
            line: &["c", "b", "a"],
        },
        Row {
            what: "nodes where it failed go last",
            rules: preferred.clone(),
            situation: Situation {
                failed_on: set(&["c"]),
                ..live(&["a", "b", "c"])
            },
            line: &["b", "a", "c"],
        },
        Row {
            what: "a move target leads even where the group failed",
            rules: preferred.clone(),
            situation: Situation {
                target: Some("a"),
                failed_on: set(&["a", "c"]),
                ..live(&["a", "b", "c"])
            },
            line: &["a", "b", "c"],
        },
        Row {
            what: "drained nodes are left out while another can take it",
            rules: preferred.clone(),
            situation: Situation {
                drained: set(&["c", "a"]),
                ..live(&["a", "b", "c"])
            },
            line: &["b"],
        },
        Row {
            what: "drained nodes take it when no other can, in order",
            rules: preferred.clone(),
            situation: Situation {
                drained: set(&["a", "b", "c"]),
                ..live(&["a", "b", "c"])
            },
            line: &["c", "b", "a"],
        },
        Row {
            what: "possible_nodes is a hard limit",
            rules: Rules {
                possible_nodes: names(&["a", "b"]),
                ..preferred.clone()
            },
            situation: live(&["a", "b", "c"]),
            line: &["b", "a"],
        },
        Row {
            what: "a move target outside possible_nodes is not taken",
            rules: Rules {
                possible_nodes: names(&["a", "b"]),
                ..preferred.clone()
            },
            situation: Situation {
                target: Some("c"),
                ..live(&["a", "b", "c"])
            },
            line: &["b", "a"],
        },
        Row {
            what: "a drained possible node is still used when it is the only one",
            rules: Rules {
                possible_nodes: names(&["a"]),
                ..Rules::default()
            },
            situation: Situation {
                drained: set(&["a"]),
                ..live(&["a", "b"])
            },
            line: &["a"],
        },
        Row {
            what: "soft anti-affinity: a node sharing the class comes after the others",
            rules: Rules {
                anti_affinity: Some("db".into()),
                ..preferred.clone()
            },
            situation: Situation {
                sharing: [("c", "other")].into_iter().collect(),
                ..live(&["a", "b", "c"])
            },
            line: &["b", "a", "c"],
        },
        Row {
            what: "soft anti-affinity still uses the sharing node when it is the only one",
            rules: Rules {
                anti_affinity: Some("db".into()),
                ..preferred.clone()
            },
            situation: Situation {
                sharing: [("c", "other")].into_iter().collect(),
                ..live(&["c"])
            },
            line: &["c"],
        },
        Row {
            what: "strict anti-affinity never shares",
            rules: Rules {
                anti_affinity: Some("db".into()),
                anti_affinity_strict: true,
                ..preferred.clone()
            },
            situation: Situation {
                sharing: [("c", "other")].into_iter().collect(),
                ..live(&["c"])
            },
            line: &[],
        },
        Row {
            what: "a failed node weighs more than sharing a class",
            rules: Rules {
                anti_affinity: Some("db".into()),
                ..preferred.clone()
            },
            situation: Situation {
                sharing: [("c", "other")].into_iter().collect(),
                failed_on: set(&["b"]),
                ..live(&["b", "c"])
            },
            line: &["c", "b"],
        },
        Row {
            what: "no live node at all",
            rules: preferred.clone(),
            situation: live(&[]),
            line: &[],
        },
    ];
    for row in rows {
        let line = line_up("g", &row.rules, &row.situation);
        assert_eq!(line.nodes, names(row.line), "{}", row.what);
        assert_eq!(
            line.why_empty(&row.rules).is_some(),
            row.line.is_empty(),
            "{}",
            row.what
        );
    }
}

#[test]
fn an_empty_line_says_why() {
    let rules = Rules {
        possible_nodes: names(&["x", "y"]),
        anti_affinity: Some("db".into()),
        anti_affinity_strict: true,
        ..Rules::default()
    };
    let s = Situation {
        sharing: [("x", "db2")].into_iter().collect(),
        ..live(&["a", "x"])
    };
    let line = line_up("db1", &rules, &s);
    assert_eq!(
        line.excluded,
        vec![
            ("a".to_string(), Exclusion::NotPossible),
            (
                "x".to_string(),
                Exclusion::Strict {
                    group: "db2".into()
                }
            )
        ]
    );
    let why = line.why_empty(&rules).unwrap();
    assert!(
        why.contains("a are not among its possible_nodes [x, y]"),
        "{why}"
    );
    assert!(
        why.contains("x runs group db2 of anti-affinity class \"db\" (strict)"),
        "{why}"
    );
    assert_eq!(
        line_up("g", &rules, &live(&[])).why_empty(&rules).unwrap(),
        "no node is live"
    );
    assert_eq!(line.rank("x"), None);
}

#[test]
fn groups_without_preferences_spread_and_keep_their_node() {
    let nodes = ["n1", "n2", "n3"];
    let groups: Vec<String> = (0..300).map(|i| format!("g{i:03}")).collect();
    let first = |live: &[&str], g: &str| {
        line_up(
            g,
            &Rules::default(),
            &Situation {
                live: live.iter().copied().collect(),
                ..Situation::default()
            },
        )
        .nodes[0]
            .clone()
    };
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for g in &groups {
        *per.entry(first(&nodes, g)).or_default() += 1;
    }
    // Even within a few percent: 100 each.
    for n in nodes {
        let c = per.get(n).copied().unwrap_or(0);
        assert!((80..=120).contains(&c), "{per:?}");
    }
    // n3 goes: only its groups move, and they spread over the others.
    let mut moved: BTreeMap<String, usize> = BTreeMap::new();
    for g in &groups {
        let before = first(&nodes, g);
        let after = first(&["n1", "n2"], g);
        if before != "n3" {
            assert_eq!(before, after, "{g} moved although its node stayed");
        } else {
            *moved.entry(after).or_default() += 1;
        }
    }
    assert_eq!(moved.len(), 2, "{moved:?}");
    // The order does not depend on the order nodes were seen in.
    assert_eq!(first(&["n3", "n1", "n2"], "g007"), first(&nodes, "g007"));
}

#[test]
fn failback_only_to_a_more_preferred_node_inside_its_window() {
    let rules = Rules {
        preferred_nodes: names(&["a", "b"]),
        failback: true,
        ..Rules::default()
    };
    let line = |nodes: &[&str]| Line {
        nodes: names(nodes),
        excluded: vec![],
    };
    let any = |_: &str| Some(0);
    assert_eq!(
        failback_to(&rules, &line(&["a", "b", "c"]), "b", any),
        Some("a".into())
    );
    assert_eq!(
        failback_to(&rules, &line(&["a", "b", "c"]), "c", any),
        Some("a".into())
    );
    assert_eq!(failback_to(&rules, &line(&["a", "b"]), "a", any), None);
    // The first in line is not preferred (a move target, say).
    assert_eq!(failback_to(&rules, &line(&["c", "a"]), "b", any), None);
    let off = Rules {
        failback: false,
        ..rules.clone()
    };
    assert_eq!(failback_to(&off, &line(&["a", "b"]), "b", any), None);

    let windowed = Rules {
        failback_window: Some("01:00-05:00".parse().unwrap()),
        ..rules.clone()
    };
    let at = |m: u16| move |n: &str| (n == "a").then_some(m);
    assert_eq!(
        failback_to(&windowed, &line(&["a", "b"]), "b", at(59)),
        None
    );
    assert_eq!(
        failback_to(&windowed, &line(&["a", "b"]), "b", at(60)),
        Some("a".into())
    );
    assert_eq!(
        failback_to(&windowed, &line(&["a", "b"]), "b", at(299)),
        Some("a".into())
    );
    assert_eq!(
        failback_to(&windowed, &line(&["a", "b"]), "b", at(300)),
        None
    );
    // The preferred node's clock is not known: no failback.
    assert_eq!(
        failback_to(&windowed, &line(&["a", "b"]), "b", |_: &str| None),
        None
    );
}

#[test]
fn windows_parse_wrap_midnight_and_refuse_nonsense() {
    let w: Window = "22:30-02:00".parse().unwrap();
    assert_eq!(w.to_string(), "22:30-02:00");
    for (m, inside) in [
        (22 * 60 + 29, false),
        (22 * 60 + 30, true),
        (0, true),
        (119, true),
        (120, false),
    ] {
        assert_eq!(w.contains(m), inside, "{m}");
    }
    for bad in [
        "",
        "1:00-05:00",
        "01:00",
        "24:00-01:00",
        "01:60-02:00",
        "01:00-01:00",
        "a:b-c:d",
    ] {
        let e = bad.parse::<Window>().unwrap_err();
        assert!(e.contains(&format!("{bad:?}")), "{e}");
    }
    // UTC+1 at 00:30 UTC is 01:30 there; UTC-5 is the evening before.
    assert_eq!(local_minute(30 * 60, 3600), 90);
    assert_eq!(local_minute(30 * 60, -5 * 3600), 19 * 60 + 30);
    assert_eq!(local_minute(i64::MAX, i32::MAX), local_minute(i64::MAX, 0));
}

#[test]
fn failovers_past_the_threshold_in_the_period_are_refused() {
    let rules = Rules {
        failover_threshold: Some(2),
        failover_period: Duration::from_secs(3600),
        ..Rules::default()
    };
    let hour = 3_600_000;
    let now = 10 * hour;
    assert!(may_fail_over(&rules, &[], now).is_ok());
    assert!(may_fail_over(&rules, &[now - 10], now).is_ok());
    let e = may_fail_over(&rules, &[now - 10, now - hour / 2], now).unwrap_err();
    assert!(
        e.contains("failed over 2 time(s) in the last 1h (failover_threshold 2)"),
        "{e}"
    );
    // Older than the period: forgotten.
    assert!(may_fail_over(&rules, &[now - 10, now - hour], now).is_ok());
    assert_eq!(
        recent_failovers(&rules, &[now - hour, now - 5, now - 10], now),
        vec![now - 10, now - 5]
    );
    // Times from a clock ahead of this one do not count.
    assert!(may_fail_over(&rules, &[now + 10, now + 20], now).is_ok());
    // No threshold: any number.
    let free = Rules::default();
    assert!(may_fail_over(&free, &[now; 100], now).is_ok());
}
