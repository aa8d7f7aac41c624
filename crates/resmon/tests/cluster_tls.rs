//! Cluster mode over TLS end to end: a real `resmon serve` joins an etcd
//! that serves clients over https only, asks for client certificates and
//! has authentication on, and brings its group online; `resmon check`
//! refuses `[cluster] tls` and `password_file` settings it cannot use,
//! naming the key.

#![cfg(feature = "etcd")]

mod common;

use common::{check, check_refuses, refused, skip, write, Daemon};
use resmon_cluster::testkit::{etcd_available, EtcdCluster, TlsFiles};
use std::path::Path;
use std::time::Duration;

const ROOT_PASSWORD: &str = "e2e-root-pw";

/// `[cluster]` for node `n1` on `endpoint`, with `files`' client
/// certificate, as etcd's `root` whose password is in `password_file`.
fn cluster_section(endpoint: &str, files: &TlsFiles, password_file: &Path) -> String {
    format!(
        "[cluster]\nnode = \"n1\"\netcd = [\"{endpoint}\"]\nlease_ttl = \"2s\"\nkey_prefix = \"/tls-e2e\"\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\nuser = \"root\"\npassword_file = \"{}\"\n",
        files.ca.display(),
        files.client_cert.display(),
        files.client_key.display(),
        password_file.display()
    )
}

/// A password file, the monitor's user's alone.
fn password_file(dir: &Path, password: &str) -> std::path::PathBuf {
    let p = write(dir, "etcd-password", &format!("{password}\n"));
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

#[test]
fn a_node_joins_etcd_over_tls_as_a_user_and_runs_its_group() {
    if !etcd_available() {
        skip(
            "cluster_tls",
            "etcd is not installed (Debian: apt-get install etcd-server)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::generate(dir.path()).expect("making certificates");
    let etcd = EtcdCluster::start_tls(1, &files).expect("starting etcd");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(etcd.enable_auth(&files, ROOT_PASSWORD))
        .expect("turning etcd's authentication on");
    let config = format!(
        "{}\n[[resource]]\nname = \"web\"\ngroup = \"web\"\ntype = \"process\"\ncommand = [\"sleep\", \"1000\"]\n",
        cluster_section(
            &etcd.endpoint(0),
            &files,
            &password_file(dir.path(), ROOT_PASSWORD)
        )
    );
    let mut d = Daemon::start(&config);
    d.wait_state("web", "online", Duration::from_secs(30));
    let nodes: serde_json::Value = serde_json::from_str(&d.ok(&["nodes", "--json"])).unwrap();
    assert_eq!(nodes["member"], true, "{nodes}");
    assert_eq!(nodes["owners"]["web"], "n1", "{nodes}");
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn check_names_the_tls_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::generate(dir.path()).expect("making certificates");
    let pw = password_file(dir.path(), "pw");
    let good = cluster_section("https://127.0.0.1:2379", &files, &pw);
    let resource =
        "\n[[resource]]\nname = \"web\"\ngroup = \"web\"\ntype = \"process\"\ncommand = [\"sleep\", \"1\"]\n";
    // The good section passes; each broken one is refused, naming its key.
    let missing = dir.path().join("missing.pem");
    let no_key = good.replace(&format!(", key = \"{}\"", files.client_key.display()), "");
    let gone_ca = good.replace(
        &files.ca.display().to_string(),
        &missing.display().to_string(),
    );
    let http = good.replace("https://", "http://");
    let unknown = good.replace("cert = ", "crt = ");
    let cases: &[(&str, String)] = &[
        (&no_key, "[cluster] tls.key is missing".into()),
        (
            &gone_ca,
            format!("[cluster] tls.ca {missing:?}: cannot be read"),
        ),
        (
            &http,
            "[cluster] tls: set, but the etcd endpoints are http://".into(),
        ),
        (
            &unknown,
            "[cluster] tls > crt: unknown key \"crt\"; did you mean \"cert\"?".into(),
        ),
    ];
    for (section, want) in cases {
        let err = check_refuses(&format!("{section}{resource}"));
        assert!(err.contains(want.as_str()), "{want:?} not in:\n{err}");
    }
    let file = write(dir.path(), "good.toml", &format!("{good}{resource}"));
    let out = check(&file, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same config, once others may read the password.
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = refused("check", &file, 2);
    let want = format!("[cluster] password_file {pw:?}: is open to group or others");
    assert!(err.contains(&want), "{want:?} not in:\n{err}");
}
