//! The workspace keeps to its map: `docs/design.md` §1 says which crate
//! may import which, and `cargo metadata` shows which do. A dependency the
//! map does not allow, a crate the map does not know, or a map row naming
//! no crate fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

type Map = BTreeMap<String, BTreeSet<String>>;

/// The rows of the table in the section `## 1. ...` of `design`: crate
/// name -> the crates it may import.
fn map_of(design: &str) -> Map {
    let section = design
        .split("\n## ")
        .find(|s| s.starts_with("1. "))
        .expect("docs/design.md has a section `## 1. ...` with the crate map");
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
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
fn violations(map: &Map, packages: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, deps) in packages {
        let Some(allowed) = map.get(name) else {
            out.push(format!(
                "crate {name} is not in the map of docs/design.md §1: add its row"
            ));
            continue;
        };
        for dep in deps.iter().filter(|d| packages.contains_key(*d)) {
            if !allowed.contains(dep) {
                out.push(format!(
                    "crate {name} imports {dep}, which docs/design.md §1 does not allow"
                ));
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

/// The workspace's crates and every workspace crate each depends on (of
/// any kind: normal, dev or build), from `cargo metadata`.
fn packages(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
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
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["name"].as_str().map(str::to_owned))
                .collect();
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
        | `core` | rules | `contract` |\n| `contract` | types | none |\n| `gone` | nothing | none |\n\n\
        ## 2. Next\n\n| `other` | not the map | `core` |\n";
    let map = map_of(design);
    assert_eq!(map.len(), 3, "{map:?}");
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let packages = BTreeMap::from([
        ("core".to_owned(), set(&["contract", "serde"])),
        ("contract".to_owned(), set(&["core"])),
        ("new".to_owned(), set(&[])),
    ]);
    assert_eq!(
        violations(&map, &packages),
        [
            "crate contract imports core, which docs/design.md §1 does not allow",
            "crate new is not in the map of docs/design.md §1: add its row",
            "docs/design.md §1 names gone, which is no crate of the workspace",
        ]
    );
}
