//! Members against a real etcd that serves clients over TLS only and asks
//! for client certificates (`--client-cert-auth`), with certificates made
//! by the test, and with etcd users and passwords where a case turns
//! authentication on: joining, owning a group and renewing the lease work;
//! a wrong CA, a missing client certificate and a wrong password each fail
//! with an error that says which endpoint and why.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use resmon_cluster::testkit::{etcd_available, EtcdCluster, TlsFiles};
use resmon_cluster::{Claim, Member, Settings, Tls};

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// The password of etcd's `root` user, where a case turns auth on.
const ROOT_PASSWORD: &str = "root-pw-1";

/// A 1-member etcd with TLS and the files it uses, or `None` (with a note)
/// where `etcd` is missing.
fn etcd(dir: &Path) -> Option<(EtcdCluster, TlsFiles)> {
    if !etcd_available() {
        eprintln!("etcd is not installed: skipping (Debian: apt-get install etcd-server)");
        return None;
    }
    let files = TlsFiles::generate(dir).expect("making certificates");
    let etcd = EtcdCluster::start_tls(1, &files).expect("starting etcd");
    Some((etcd, files))
}

/// Settings for `etcd` with the client certificate of `files`.
fn settings(etcd: &EtcdCluster, files: &TlsFiles, test: &str) -> Settings {
    Settings::new("n1", etcd.endpoints())
        .with_lease_ttl(Duration::from_secs(2))
        .with_key_prefix(format!("/test/{test}"))
        .with_tls(Tls {
            ca: Some(files.ca.clone()),
            cert: Some(files.client_cert.clone()),
            key: Some(files.client_key.clone()),
        })
}

/// A password file for `password`, the monitor's user's alone.
fn password_file(dir: &Path, password: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("password-{password}"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{password}\n").as_bytes()).unwrap();
    path
}

/// etcd with TLS and authentication on, and settings for it as its `root`
/// user with `password` (in a password file); `None` without etcd.
async fn with_auth(dir: &Path, test: &str, password: &str) -> Option<(EtcdCluster, Settings)> {
    let (etcd, files) = etcd(dir)?;
    etcd.enable_auth(&files, ROOT_PASSWORD)
        .await
        .expect("turning etcd's authentication on");
    let s = settings(&etcd, &files, test).with_user("root", password_file(dir, password));
    Some((etcd, s))
}

async fn join_err(settings: Settings) -> String {
    let err = tokio::time::timeout(DEADLINE, Member::join(settings))
        .await
        .expect("join answers")
        .expect_err("join must fail");
    eprintln!("join failed, as it should: {err}");
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_over_tls_as_an_etcd_user_owns_a_group_and_renews() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_etcd, s)) = with_auth(dir.path(), "join", ROOT_PASSWORD).await else {
        return;
    };
    let member = Member::join(s)
        .await
        .unwrap_or_else(|e| panic!("joining over TLS: {e}"));
    let claim = member.acquire("web").await.unwrap();
    let Claim::Won(own) = claim else {
        panic!("the group is free, yet: {claim:?}");
    };
    assert_eq!(member.owner("web").await.unwrap().unwrap().token, own.token);
    // Renewals go on: the deadline moves forward, past what the grant gave.
    let mut state = member.lease_state();
    let first = state.borrow_and_update().may_run_until.expect("a deadline");
    let start = Instant::now();
    loop {
        let now = state.borrow_and_update().clone();
        assert_eq!(now.lost, None);
        if now.may_run_until.is_some_and(|u| u > first) && member.renewals().0 >= 2 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the lease was not renewed");
        tokio::time::timeout(DEADLINE, state.changed())
            .await
            .expect("a renewal")
            .unwrap();
    }
    member.leave().await.unwrap();
}

/// Joins with TLS settings that `tls` makes of the files, which must fail
/// in the handshake, naming the endpoint: the error, or `None` without
/// etcd.
async fn handshake_fails(test: &str, tls: impl FnOnce(&TlsFiles) -> Tls) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, files) = etcd(dir.path())?;
    let s = settings(&etcd, &files, test).with_tls(tls(&files));
    let e = join_err(s).await;
    assert!(e.contains(&etcd.endpoint(0)), "{e}");
    assert!(e.contains("TLS handshake failed"), "{e}");
    Some(e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_trusts_another_ca_cannot_join_and_is_told_why() {
    let Some(e) = handshake_fails("wrong-ca", |files| Tls {
        ca: Some(files.other_ca.clone()),
        cert: Some(files.client_cert.clone()),
        key: Some(files.client_key.clone()),
    })
    .await
    else {
        return;
    };
    assert!(
        e.contains("etcd's certificate did not verify against tls.ca"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_client_certificate_cannot_join_and_is_told_why() {
    let Some(e) = handshake_fails("no-cert", |files| Tls {
        ca: Some(files.ca.clone()),
        ..Tls::default()
    })
    .await
    else {
        return;
    };
    assert!(e.contains("requires a client certificate"), "{e}");
    assert!(e.contains("set tls.cert and tls.key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_says_authentication_failed() {
    let dir = tempfile::tempdir().unwrap();
    let Some((etcd, s)) = with_auth(dir.path(), "wrong-password", "not-the-password").await else {
        return;
    };
    let e = join_err(s).await;
    assert!(
        e.contains(&format!(
            "etcd at {}: authentication failed for user \"root\"",
            etcd.endpoint(0)
        )),
        "{e}"
    );
}
