//! compute_ctl as PID 1 (in a new PID namespace, as in a container) and as a child subreaper
//! (`--reap-orphans`): orphans are reaped, the postmaster's own exit status is not stolen.

use std::ffi::OsString;
use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::Connection;

const ORPHANS: usize = 4;
const WAIT: Duration = Duration::from_secs(30);

fn spec_args(c: &Compute) -> Vec<OsString> {
    let name = "orphan's \"parent\" $x$ 🐘";
    let s = spec(vec![role(name, None)], vec![database(name, name)], vec![]);
    c.config_args(&s)
}

/// Make Postgres leave `ORPHANS` shell processes behind (`COPY ... TO PROGRAM` runs a shell
/// whose background job outlives it), check they were handed to compute_ctl (`reaper`), let
/// them finish, and check that none stays a zombie. Then kill -9 the postmaster: its exit is
/// still reported (exit code 1, the signal in the log).
async fn orphans_are_reaped_and_the_postmaster_exit_is_reported(c: &mut Compute, reaper: i32) {
    let postmaster = children_of(reaper)
        .into_iter()
        .find(|p| p.comm == "postgres")
        .map(|p| p.pid)
        .unwrap_or_else(|| panic!("no postgres child of {reaper}\n{}", c.log_tail(40)));

    let mut conn = c.connect("postgres").await;
    for i in 0..ORPHANS {
        let program = format!(
            // Read the row first: a shell gone before Postgres wrote it fails the COPY.
            "cat >/dev/null; (while [ ! -e go ]; do sleep 0.05; done; touch done-{i}) </dev/null >/dev/null 2>&1 &"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "COPY (SELECT 1) TO PROGRAM '{program}'"
        )))
        .execute(&mut conn)
        .await
        .expect("COPY TO PROGRAM");
    }
    conn.close().await.ok();

    let shells = || {
        children_of(reaper)
            .into_iter()
            .filter(|p| p.comm == "sh")
            .count()
    };
    c.eventually("the orphans are reparented to compute_ctl", async || {
        shells() == ORPHANS
    })
    .await;

    fs::write(c.pgdata.join("go"), "").unwrap();
    c.eventually("the orphans finish", async || {
        (0..ORPHANS).all(|i| c.pgdata.join(format!("done-{i}")).exists())
    })
    .await;
    c.eventually("no orphan is left, not even as a zombie", async || {
        shells() == 0 && children_of(reaper).iter().all(Proc::is_live)
    })
    .await;
    assert!(
        process_alive(postmaster),
        "the reaper must not touch Postgres"
    );

    kill(Pid::from_raw(postmaster), Signal::SIGKILL).expect("kill -9 postmaster");
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(1), "{st}\n{}", c.log_tail(40));
    let log = c.log();
    assert!(
        log.contains("postmaster exited: killed by signal 9"),
        "the postmaster's exit status was lost\n{}",
        c.log_tail(40)
    );
    assert!(!log.contains("waiting for the postmaster failed"), "{log}");
    // Not `assert_no_postgres_left`: postmaster.pid holds a pid of the namespace.
    c.eventually("no process is left for PGDATA", async || {
        processes_for(&c.pgdata, None).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn as_pid_1_in_a_pid_namespace() {
    let mut c = Compute::new("pid1");
    let args = spec_args(&c);
    c.start_raw_via(&["unshare", "--pid", "--mount-proc", "--kill-child"], args);
    // unshare's forked child is compute_ctl, PID 1 of the new namespace.
    let unshare = c.child_pid();
    let mut compute_ctl = None;
    c.eventually("compute_ctl runs under unshare", async || {
        compute_ctl = children_of(unshare).first().map(|p| p.pid);
        compute_ctl.is_some()
    })
    .await;
    let compute_ctl = compute_ctl.unwrap();
    // Not `wait_for_status`: it records the postmaster's pid, which is one of the namespace.
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((_, body)) = c.try_status().await
            && body["status"] == "running"
        {
            break;
        }
        assert!(c.try_exit().is_none(), "exited\n{}", c.log_tail(40));
        assert!(Instant::now() < deadline, "not running\n{}", c.log_tail(40));
        tokio::time::sleep(POLL).await;
    }
    orphans_are_reaped_and_the_postmaster_exit_is_reported(&mut c, compute_ctl).await;
    assert!(
        c.log().contains("reaping orphaned processes pid1=true"),
        "{}",
        c.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn as_a_subreaper_with_reap_orphans() {
    let mut c = Compute::new("subreaper");
    let mut args = spec_args(&c);
    args.push("--reap-orphans".into());
    c.start_raw(args);
    let pid = c.child_pid();
    c.wait_for_status("running").await;
    orphans_are_reaped_and_the_postmaster_exit_is_reported(&mut c, pid).await;
    assert!(
        c.log().contains("reaping orphaned processes pid1=false"),
        "{}",
        c.log_tail(40)
    );
}
