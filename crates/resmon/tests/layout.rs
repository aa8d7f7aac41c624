//! The workspace keeps to its map: `docs/design.md` §1 says which crate
//! may import which (an entry marked `(tests)` only from its tests and
//! benches, as a dev-dependency), and `cargo metadata` shows which do. A
//! dependency the map does not allow, a crate the map does not know, or a
//! map row naming no crate fails here, naming it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Crate -> the crates it may import, each with whether only its tests may.
type Map = BTreeMap<String, BTreeMap<String, bool>>;
/// Crate -> the workspace crates it depends on, each with whether only as
/// a dev-dependency.
type Packages = BTreeMap<String, BTreeMap<String, bool>>;

/// The rows of the table in the section `## 1. ...` of `design`: crate
/// name -> the crates it may import.
fn map_of(design: &str) -> Map {
    let section = design
        .split("\n## ")
        .find(|s| s.starts_with("1. "))
        .expect("docs/design.md has a section `## 1. ...` with the crate map");
    let names = |cell: &str| -> BTreeMap<String, bool> {
        cell.split(',')
            .filter_map(|entry| {
                let name = entry.split('`').nth(1)?;
                Some((name.to_owned(), entry.contains("(tests)")))
            })
            .collect()
    };
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            let name = cells.first()?.trim().strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), names(cells.get(2)?)))
        })
        .collect()
}

/// What breaks the map: each a sentence naming the crate.
fn violations(map: &Map, packages: &Packages) -> Vec<String> {
    let mut out = Vec::new();
    for (name, deps) in packages {
        let Some(allowed) = map.get(name) else {
            out.push(format!(
                "crate {name} is not in the map of docs/design.md §1: add its row"
            ));
            continue;
        };
        for (dep, dev_only) in deps.iter().filter(|(d, _)| packages.contains_key(*d)) {
            match allowed.get(dep) {
                None => out.push(format!(
                    "crate {name} imports {dep}, which docs/design.md §1 does not allow"
                )),
                Some(true) if !dev_only => out.push(format!(
                    "crate {name} imports {dep} outside its tests; docs/design.md §1 allows it only as a dev-dependency"
                )),
                Some(_) => {}
            }
        }
    }
    for name in map.keys().filter(|n| !packages.contains_key(*n)) {
        out.push(format!(
            "docs/design.md §1 names {name}, which is no crate of the workspace"
        ));
    }
    out
}

/// The workspace's crates and every crate each depends on, from `cargo
/// metadata`.
fn packages(root: &Path) -> Packages {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {out:?}");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let mut deps = BTreeMap::<String, bool>::new();
            for d in p["dependencies"].as_array().into_iter().flatten() {
                let Some(dep) = d["name"].as_str() else {
                    continue;
                };
                let dev = d["kind"].as_str() == Some("dev");
                // Used outside tests if any kind of dependency is not dev.
                *deps.entry(dep.to_owned()).or_insert(true) &= dev;
            }
            (p["name"].as_str().expect("name").to_owned(), deps)
        })
        .collect()
}

#[test]
fn every_crate_imports_only_what_the_map_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let design = std::fs::read_to_string(root.join("docs/design.md")).expect("docs/design.md");
    let map = map_of(&design);
    let found = violations(&map, &packages(&root));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_check_finds_a_forbidden_import_an_unknown_crate_and_a_stale_row() {
    let design = "# x\n\n## 1. The crates\n\n| crate | owns | may import |\n|---|---|---|\n\
        | `core` | rules | `contract`, `support` (tests) |\n| `contract` | types | none |\n\
        | `support` | help | none |\n| `gone` | nothing | none |\n\n\
        ## 2. Next\n\n| `other` | not the map | `core` |\n";
    let map = map_of(design);
    assert_eq!(map.len(), 4, "{map:?}");
    assert_eq!(map["core"].get("support"), Some(&true));
    assert_eq!(map["core"].get("contract"), Some(&false));
    let deps = |names: &[(&str, bool)]| -> BTreeMap<String, bool> {
        names.iter().map(|&(n, dev)| (n.to_owned(), dev)).collect()
    };
    let mut packages = Packages::from([
        (
            "core".to_owned(),
            deps(&[("contract", false), ("serde", false), ("support", true)]),
        ),
        ("contract".to_owned(), deps(&[("core", false)])),
        ("support".to_owned(), deps(&[])),
        ("new".to_owned(), deps(&[])),
    ]);
    assert_eq!(
        violations(&map, &packages),
        [
            "crate contract imports core, which docs/design.md §1 does not allow",
            "crate new is not in the map of docs/design.md §1: add its row",
            "docs/design.md §1 names gone, which is no crate of the workspace",
        ]
    );
    packages
        .get_mut("core")
        .unwrap()
        .insert("support".into(), false);
    assert!(violations(&map, &packages).contains(
        &"crate core imports support outside its tests; docs/design.md §1 allows it only as a dev-dependency".to_owned()
    ));
}
