//! Process tasks: rights, exit codes, terminate, wait, reaping, spawning.

use std::io;

use resmon_task::{Output, Rights, SpawnSpec, TaskError, STILL_ACTIVE};
use rustix::process::Signal;

use crate::util::{eventually, proc_info, reaped, reaper, running, sh, within};

#[tokio::test]
async fn rights_are_enforced() {
    let task = reaper().spawn(&sh("exec sleep 1000")).unwrap();
    let pid = task.pid().unwrap();
    assert_eq!(task.rights(), Rights::all());

    let observer = task.duplicate(Rights::QUERY | Rights::SYNCHRONIZE).unwrap();
    assert_eq!(observer.rights(), Rights::QUERY | Rights::SYNCHRONIZE);
    assert!(matches!(
        observer.terminate(1),
        Err(TaskError::AccessDenied)
    ));
    assert!(matches!(
        observer.signal(Signal::KILL),
        Err(TaskError::AccessDenied)
    ));
    assert!(matches!(
        observer.duplicate(Rights::QUERY | Rights::TERMINATE),
        Err(TaskError::AccessDenied)
    ));
    let query_only = observer.duplicate(Rights::QUERY).unwrap();
    assert!(matches!(
        query_only.wait().await,
        Err(TaskError::AccessDenied)
    ));
    let sync_only = observer.duplicate(Rights::SYNCHRONIZE).unwrap();
    assert!(matches!(
        sync_only.exit_code(),
        Err(TaskError::AccessDenied)
    ));

    // The denied terminate changed nothing.
    assert!(running(pid), "the process must still run");
    assert_eq!(observer.exit_code().unwrap(), STILL_ACTIVE);
    assert!(!observer.is_signaled());

    task.terminate(3).unwrap();
    assert_eq!(within("the kill", observer.wait()).await.unwrap(), 3);
}

#[tokio::test]
async fn first_terminate_wins() {
    let task = reaper().spawn(&sh("exec sleep 1000")).unwrap();
    assert_eq!(task.exit_code().unwrap(), STILL_ACTIVE);
    task.terminate(7).unwrap();
    task.terminate(9).unwrap();
    assert_eq!(within("the kill", task.wait()).await.unwrap(), 7);
    assert_eq!(task.exit_code().unwrap(), 7);
    assert!(task.is_signaled());
    task.terminate(11).unwrap();
    assert_eq!(task.exit_code().unwrap(), 7);
}

#[tokio::test]
async fn terminate_after_exit_keeps_the_exit_code() {
    let task = reaper().spawn(&sh("exit 3")).unwrap();
    assert_eq!(within("the exit", task.wait()).await.unwrap(), 3);
    task.terminate(9).unwrap();
    task.signal(Signal::TERM).unwrap();
    assert_eq!(task.exit_code().unwrap(), 3);
}

#[tokio::test]
async fn a_signal_death_is_128_plus_the_signal() {
    let task = reaper().spawn(&sh("exec sleep 1000")).unwrap();
    task.signal(Signal::TERM).unwrap();
    assert_eq!(within("the signal", task.wait()).await.unwrap(), 128 + 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_releases_every_waiter() {
    let task = reaper().spawn(&sh("exec sleep 1000")).unwrap();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let handle = task.duplicate(Rights::SYNCHRONIZE | Rights::QUERY).unwrap();
            tokio::spawn(async move { handle.wait().await.unwrap() })
        })
        .collect();
    assert!(!task.is_signaled());
    task.terminate(5).unwrap();
    for waiter in waiters {
        assert_eq!(within("a waiter", waiter).await.unwrap(), 5);
    }
}

#[tokio::test]
async fn no_zombie_is_left() {
    let task = reaper().spawn(&sh("exit 0")).unwrap();
    let pid = task.pid().unwrap();
    assert_eq!(within("the exit", task.wait()).await.unwrap(), 0);
    // Reaped before wait returned: no /proc entry, not even a zombie (unless
    // the pid was already reused by some new, live process).
    assert!(
        reaped(pid) || proc_info(pid).is_some_and(|(state, _, _)| state != 'Z'),
        "{pid} is a zombie"
    );
}

#[tokio::test]
async fn a_missing_program_is_an_error_naming_it() {
    let err = reaper()
        .spawn(&SpawnSpec::new(
            "/nonexistent/resmon-no-such-program",
            ["x"],
        ))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(
        err.to_string()
            .contains("/nonexistent/resmon-no-such-program"),
        "{err}"
    );
    let err = reaper()
        .spawn(&SpawnSpec::new(
            "resmon-no-such-program-in-path",
            Vec::<String>::new(),
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("resmon-no-such-program-in-path"),
        "{err}"
    );
}

#[tokio::test]
async fn output_env_cwd_and_session() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    std::fs::write(&out, "before\n").unwrap();
    let mut spec =
        sh("echo \"$RESMON_TEST_VAR\"; pwd; echo err >&2; ps -o sid= -p $$ | tr -d ' '; echo $$");
    spec.env.push(("RESMON_TEST_VAR".into(), "hello".into()));
    spec.cwd = Some(dir.path().to_owned());
    spec.new_session = true;
    spec.stdout = Output::File(out.clone());
    spec.stderr = Output::File(out.clone());
    let task = reaper().spawn(&spec).unwrap();
    assert_eq!(within("the script", task.wait()).await.unwrap(), 0);
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(
        lines[..4],
        ["before", "hello", cwd.to_str().unwrap(), "err"],
        "{text}"
    );
    // setsid: the shell leads its own session.
    assert_eq!(lines[4], lines[5], "{text}");
}

#[tokio::test]
async fn a_bad_output_file_is_an_error_naming_it() {
    let mut spec = sh("true");
    spec.stdout = Output::File("/nonexistent/dir/out.log".into());
    let err = reaper().spawn(&spec).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/dir/out.log"),
        "{err}"
    );
}

#[tokio::test]
async fn user_drops_privileges_and_groups() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: skipping user_drops_privileges_and_groups");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The output file is opened as the user: its directory must be theirs.
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let out = dir.path().join("id.txt");
    let mut spec = sh("id -u; id -g; id -G");
    spec.user = Some((65534, 65534));
    spec.stdout = Output::File(out.clone());
    let task = reaper().spawn(&spec).unwrap();
    assert_eq!(within("id", task.wait()).await.unwrap(), 0);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "65534\n65534\n65534\n"
    );
    // Created by the user, not by root.
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&out).unwrap()),
        65534
    );
}

#[tokio::test]
async fn output_files_are_opened_with_the_users_rights() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: skipping output_files_are_opened_with_the_users_rights");
        return;
    }
    // A file only root may write, reached through a symlink the user
    // planted: the spawn fails naming the file, and the file is untouched.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    let user_dir = dir.path().join("user");
    std::fs::create_dir(&user_dir).unwrap();
    std::os::unix::fs::chown(&user_dir, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let link = user_dir.join("out.log");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let mut spec = sh("echo pwned");
    spec.user = Some((65534, 65534));
    spec.stdout = Output::File(link.clone());
    let err = reaper().spawn(&spec).unwrap_err().to_string();
    assert!(
        err.contains("out.log") && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only\n");
}

#[tokio::test]
async fn inherited_descriptors_do_not_reach_the_child() {
    // A descriptor without close-on-exec, as a monitor may inherit one, at
    // a number the child's own `ls` will not open (it takes the lowest free).
    let (r, _w) = rustix::pipe::pipe().unwrap();
    // SAFETY: F_DUPFD duplicates a descriptor we own into a new one (without
    // close-on-exec), which we own from then on.
    let high = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&r), libc::F_DUPFD, 300) };
    assert!(high >= 300, "F_DUPFD failed");
    // SAFETY: `high` was just made by F_DUPFD and nothing else owns it.
    let high = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&high);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fds");
    let mut spec = sh("ls /proc/self/fd");
    spec.stdout = Output::File(out.clone());
    let task = reaper().spawn(&spec).unwrap();
    assert_eq!(within("ls", task.wait()).await.unwrap(), 0);
    let fds: Vec<u32> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // 0, 1, 2 and the one ls opens to read the directory; never ours.
    assert!(!fds.contains(&(raw as u32)), "fd {raw} leaked: {fds:?}");
    assert!(fds.iter().filter(|&&fd| fd > 2).count() <= 1, "{fds:?}");
}

#[tokio::test]
async fn orphans_are_reaped() {
    // The shell starts a background sleep and exits: the sleep is re-parented
    // to us (child subreaper). Once killed it must be reaped, not left a zombie.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pid");
    let mut spec = sh("sleep 1000 & echo $!");
    spec.stdout = Output::File(out.clone());
    let task = reaper().spawn(&spec).unwrap();
    assert_eq!(within("the shell", task.wait()).await.unwrap(), 0);
    let orphan: u32 = std::fs::read_to_string(&out)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let own = std::process::id();
    eventually("the orphan is re-parented to us", || {
        proc_info(orphan).is_some_and(|(_, ppid, _)| ppid == own)
    })
    .await;
    // A test may signal by pid: this orphan is our child, so it cannot be reused yet.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(orphan as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    eventually("the orphan is reaped", || reaped(orphan)).await;
}
