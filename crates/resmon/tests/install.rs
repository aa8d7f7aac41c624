//! `scripts/install`: the binaries this test run built, installed under a
//! temporary prefix with their manual pages, completions and systemd unit,
//! work from there, and `--uninstall` takes back every file it put there.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/install");
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../contrib/systemd/resmon.service"
);

/// Where cargo put the binaries of this test run (`resmon` and every
/// program beside it that the monitor runs).
fn bin_dir() -> &'static Path {
    Path::new(BIN).parent().unwrap()
}

/// `SCRIPT ARGS`, its output checked for exit 0.
fn install(script: &Path, args: &[&str], destdir: Option<&Path>) -> String {
    let mut c = Command::new(script);
    c.args(args).env_remove("DESTDIR");
    if let Some(d) = destdir {
        c.env("DESTDIR", d);
    }
    let out = c.output().expect("run scripts/install");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The installed binaries of this run, under `prefix`.
fn install_built(script: &Path, prefix: &Path, destdir: Option<&Path>) -> String {
    let bins = bin_dir().to_str().unwrap();
    let prefix = prefix.to_str().unwrap();
    install(
        script,
        &["--no-build", "--bin-dir", bins, "--prefix", prefix],
        destdir,
    )
}

/// Every file (not directory) below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run")
}

#[test]
fn installed_files_work_and_uninstall_removes_every_one() {
    let test = "installed_files_work_and_uninstall_removes_every_one";
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("usr");
    let said = install_built(Path::new(SCRIPT), &prefix, None);

    let resmon = prefix.join("bin/resmon");
    let out = run(Command::new(&resmon).arg("--version"));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("resmon "));
    let relay = prefix.join("bin/resmon-log-relay");
    assert!(relay.is_file(), "the log relay is installed beside resmon");

    let bash = prefix.join("share/bash-completion/completions/resmon");
    let out = run(Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p resmon", bash.display())));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("_resmon"),
        "{out:?}"
    );
    for other in [
        "share/zsh/site-functions/_resmon",
        "share/fish/vendor_completions.d/resmon.fish",
    ] {
        let text = std::fs::read_to_string(prefix.join(other)).unwrap();
        assert!(text.contains("resmon"), "{other}");
    }

    let page = prefix.join("share/man/man1/resmon-status.1");
    assert!(page.is_file());
    match run(Command::new("man").arg("--version")).status.success() {
        false => skip(test, "no man to render the pages with"),
        true => {
            let out = run(Command::new("man")
                .arg("-l")
                .arg(&page)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100"));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{out:?}");
            assert!(text.contains("resmon-status"), "{text}");
            assert!(text.contains("--socket"), "{text}");
        }
    }

    // What it says it installed is what is there, and the manifest lists it.
    let manifest = prefix.join("share/resmon/install-manifest");
    let listed = std::fs::read_to_string(&manifest).unwrap();
    let mut installed = files_below(&prefix);
    installed.sort();
    for f in &installed {
        assert!(
            said.contains(&format!("installed {}", f.display())),
            "{f:?}: {said}"
        );
        let rel = f.strip_prefix(&prefix).unwrap().to_str().unwrap();
        assert!(
            listed.lines().any(|l| l == rel),
            "{rel} not in the manifest"
        );
    }
    match Path::new(UNIT).is_file() {
        true => assert!(prefix.join("lib/systemd/system/resmon.service").is_file()),
        false => assert!(said.contains("skipped the systemd unit"), "{said}"),
    }
    assert!(said.contains(&format!(
        "scripts/install --uninstall --prefix {}",
        prefix.display()
    )));

    // Installed again over itself: the same files, nothing lost track of.
    install_built(Path::new(SCRIPT), &prefix, None);
    let mut again = files_below(&prefix);
    again.sort();
    assert_eq!(again, installed);

    // A file of someone else's beside them is not the install's to remove.
    let own = prefix.join("bin/someone-elses");
    std::fs::write(&own, "keep me").unwrap();
    let said = install(
        Path::new(SCRIPT),
        &["--uninstall", "--prefix", prefix.to_str().unwrap()],
        None,
    );
    assert!(
        said.contains(&format!("removed {}", resmon.display())),
        "{said}"
    );
    assert_eq!(files_below(&prefix), vec![own.clone()], "{said}");
    // The directories it made went with the files, but for the one that
    // still holds a file.
    let left: Vec<_> = std::fs::read_dir(&prefix)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["bin"], "{said}");
}

/// A tree with a systemd unit (a copy of the script beside one), installed
/// for a packager: under DESTDIR, with the unit pointing at the prefix.
#[test]
fn the_unit_runs_the_installed_binary_and_destdir_is_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("scripts")).unwrap();
    std::fs::create_dir_all(tree.join("contrib/systemd")).unwrap();
    let script = tree.join("scripts/install");
    std::fs::copy(SCRIPT, &script).unwrap();
    std::fs::write(
        tree.join("contrib/systemd/resmon.service"),
        "[Service]\n\
         ExecStartPre=-/usr/local/bin/resmon check --config /etc/resmon/resmon.toml\n\
         ExecStart=/usr/local/bin/resmon serve --config /etc/resmon/resmon.toml\n\
         ExecReload=/bin/kill -HUP $MAINPID\n",
    )
    .unwrap();
    let destdir = tmp.path().join("package");
    let prefix = Path::new("/opt/resmon");
    let said = install_built(&script, prefix, Some(&destdir));

    let root = destdir.join("opt/resmon");
    assert!(root.join("bin/resmon").is_file(), "{said}");
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/resmon.service")).unwrap();
    assert_eq!(
        unit,
        "[Service]\n\
         ExecStartPre=-/opt/resmon/bin/resmon check --config /etc/resmon/resmon.toml\n\
         ExecStart=/opt/resmon/bin/resmon serve --config /etc/resmon/resmon.toml\n\
         ExecReload=/bin/kill -HUP $MAINPID\n"
    );
    assert!(!prefix.exists(), "nothing is written outside DESTDIR");

    let said = install(
        &script,
        &["--uninstall", "--prefix", "/opt/resmon"],
        Some(&destdir),
    );
    assert!(files_below(&destdir).is_empty(), "{said}");
}

#[test]
fn uninstall_removes_nothing_the_manifest_places_outside_the_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("usr");
    let outside = write(tmp.path(), "precious", "keep me");
    let manifest = prefix.join("share/resmon/install-manifest");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, "../precious\nshare/../../precious\n").unwrap();
    let out = run(Command::new(SCRIPT)
        .args(["--uninstall", "--prefix"])
        .arg(&prefix)
        .env_remove("DESTDIR"));
    assert!(out.status.success(), "{out:?}");
    assert!(outside.is_file(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not removing ../precious"));
    assert!(!manifest.exists());

    // Usage mistakes are exit 2, and --help says what it installs.
    let out = run(Command::new(SCRIPT).arg("--frobnicate"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(Command::new(SCRIPT).arg("--help"));
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--uninstall") && help.contains("DESTDIR"),
        "{help}"
    );
}
