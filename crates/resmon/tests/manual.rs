//! The manual pages and shell completions that `resmon man` and `resmon
//! completions` make from the CLI's own definitions.

mod common;

use common::*;
use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn a_manual_page_for_resmon_and_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for page in [
        "resmon",
        "resmon-status",
        "resmon-logs",
        "resmon-events",
        "resmon-serve",
    ] {
        let file = dir.path().join(format!("{page}.1"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with(".ie"),
            "{page}: {}",
            &text[..40.min(text.len())]
        );
        assert!(text.contains(&format!(".TH {page} 1")), "{page}");
    }
    // Commands started by the monitor only have no page.
    assert!(!dir.path().join("resmon-log-relay.1").exists());
    assert!(!dir.path().join("resmon-host.1").exists());
    // It renders, where man is installed.
    if let Ok(out) = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("resmon-logs.1"))
        .env("MANPAGER", "cat")
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--follow"), "{text}");
    }
    // Without --dir, resmon(1) on stdout.
    let out = run(&["man"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH resmon 1"));
}

#[test]
fn completions_load_in_their_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resmon.bash");
    std::fs::write(&file, run(&["completions", "bash"]).stdout).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p resmon", file.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("_resmon"));
    let out = run(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
