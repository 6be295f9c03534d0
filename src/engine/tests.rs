//! The engine's loop against a fake runner: no Postgres, no processes. The runner records
//! the jobs it gets and answers the way the real effects do (a `Stop` reports `Stopped`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use compute_states::{ComputeStatus, Event, SpecSource, TerminateMode};
use serde_json::json;

use super::*;
use crate::operation::Operation;
use crate::report::{Job, Runner};
use crate::spec::{JwkSet, Reserved, ValidSpec, parse_spec};

/// Records job names; holds the operations it gets until a `Stop` drops them (as the real
/// effects cancel operations in flight).
struct FakeRunner {
    jobs: Arc<Mutex<Vec<String>>>,
    reporter: Reporter,
    held: Vec<Operation>,
}

impl Runner for FakeRunner {
    fn run(&mut self, job: Job) {
        let name = match &job {
            Job::Stop(mode) => format!("stop {}", mode.as_str()),
            Job::Configure {
                postgres_running, ..
            } => format!("configure running={postgres_running}"),
            other => other.name().to_owned(),
        };
        self.jobs.lock().unwrap().push(name);
        match job {
            Job::Stop(_) => {
                self.held.clear();
                self.reporter.event(Event::Stopped);
            }
            Job::Operation(operation) => self.held.push(operation),
            _ => {}
        }
    }

    async fn shutdown(self) {
        self.jobs.lock().unwrap().push("shutdown".into());
    }
}

fn spec() -> Arc<ValidSpec> {
    let value = json!({
        "format_version": 1.0,
        "suspend_timeout_seconds": -1,
        "cluster": {"roles": [], "databases": []}
    });
    Arc::new(
        parse_spec(
            value.to_string().as_bytes(),
            &Reserved::new("cloud_admin", "neon_superuser"),
        )
        .unwrap(),
    )
}

fn keys(kid: &str) -> JwkSet {
    serde_json::from_value(json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": kid,
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    }]}))
    .unwrap()
}

struct Harness {
    handle: EngineHandle,
    reporter: Reporter,
    jobs: Arc<Mutex<Vec<String>>>,
    engine: tokio::task::JoinHandle<(i32, FakeRunner)>,
}

fn start(jwks: JwkSet) -> Harness {
    let (handle, reporter, inbox) = channel(jwks);
    let jobs = Arc::new(Mutex::new(Vec::new()));
    let runner = FakeRunner {
        jobs: jobs.clone(),
        reporter: reporter.clone(),
        held: Vec::new(),
    };
    let engine = tokio::spawn(Engine::new(inbox, runner).run());
    Harness {
        handle,
        reporter,
        jobs,
        engine,
    }
}

impl Harness {
    fn jobs(&self) -> Vec<String> {
        self.jobs.lock().unwrap().clone()
    }

    async fn configure(&self, jwks: JwkSet) -> u64 {
        self.handle
            .request(Input::Spec(Configuration {
                spec: spec(),
                jwks,
                tls: None,
                source: SpecSource::Configure,
            }))
            .await
            .unwrap()
    }

    /// The effects of a successful configuration, as the real ones report them.
    fn applied(&self) {
        self.reporter.event(Event::ConfigurationStarted);
        self.reporter.event(Event::PostgresStarted);
        self.reporter.event(Event::ConfigurationApplied);
    }

    async fn status(&self, want: ComputeStatus) -> Arc<Snapshot> {
        let wait = self.handle.wait_for(0, |s| s.status == want);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("never {want}: {}", self.handle.snapshot().status))
    }

    async fn exit(self) -> (i32, Vec<String>) {
        let (code, runner) = tokio::time::timeout(Duration::from_secs(5), self.engine)
            .await
            .expect("the engine exits")
            .unwrap();
        runner.shutdown().await;
        let jobs = self.jobs.lock().unwrap().clone();
        (code, jobs)
    }
}

#[tokio::test]
async fn stop_then_stopped_then_exit() {
    let h = start(JwkSet::default());
    let seq = h
        .handle
        .request(Input::Event(Event::TerminateRequested {
            mode: TerminateMode::Fast,
        }))
        .await
        .unwrap();
    let last = h
        .handle
        .wait_for(seq, |s| s.status == ComputeStatus::Terminated)
        .await;
    assert_eq!(last.terminate_mode, Some(TerminateMode::Fast));
    let (code, jobs) = h.exit().await;
    assert_eq!(code, 0);
    assert_eq!(jobs, ["stop fast", "shutdown"]);
}

#[tokio::test]
async fn a_startup_spec_starts_and_the_monitor_follows_the_first_running() {
    let h = start(JwkSet::default());
    h.handle
        .request(Input::Spec(Configuration {
            spec: spec(),
            jwks: JwkSet::default(),
            tls: None,
            source: SpecSource::File,
        }))
        .await
        .unwrap();
    assert_eq!(h.handle.snapshot().status, ComputeStatus::Init);
    h.reporter.event(Event::PostgresStarted);
    h.reporter.event(Event::ConfigurationApplied);
    let running = h.status(ComputeStatus::Running).await;
    assert!(running.metrics.total_startup_ms <= running.metrics.wait_for_spec_ms + 5_000);
    assert_eq!(h.jobs(), ["start", "start monitor"]);
}

/// `wait_for(seq)` of a request sees only snapshots at or after the request's own.
#[tokio::test]
async fn a_configure_waits_for_its_own_outcome() {
    let h = start(JwkSet::default());
    let seq = h.configure(JwkSet::default()).await;
    h.reporter.event(Event::ConfigurationStarted);
    h.reporter
        .event(Event::ConfigurationFailed { error: "no".into() });
    let failed = h.handle.wait_for(seq, |s| !s.status.is_transient()).await;
    assert_eq!(failed.status, ComputeStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("no"));
    let again = h.configure(JwkSet::default()).await;
    assert!(again > seq);
    h.applied();
    let running = h.handle.wait_for(again, |s| !s.status.is_transient()).await;
    assert_eq!(running.status, ComputeStatus::Running);
    assert_eq!(
        h.jobs(),
        [
            "configure running=false",
            "configure running=false",
            "start monitor"
        ]
    );
}

#[tokio::test]
async fn keys_follow_the_outcome_of_their_configuration() {
    let h = start(keys("startup"));
    let startup = h.handle.snapshot().jwks.clone();
    // A failed configuration keeps the keys in force.
    h.configure(keys("failed")).await;
    h.reporter.event(Event::ConfigurationStarted);
    h.reporter.event(Event::StartFailed {
        error: "initdb".into(),
    });
    let failed = h.status(ComputeStatus::Failed).await;
    assert!(Arc::ptr_eq(&failed.jwks, &startup));
    // Accepted but not yet running: still the old keys.
    h.configure(keys("new")).await;
    assert!(Arc::ptr_eq(&h.handle.snapshot().jwks, &startup));
    h.applied();
    let running = h.status(ComputeStatus::Running).await;
    assert_eq!(*running.jwks, keys("new"));
    // An empty set keeps the keys in force.
    let seq = h.configure(JwkSet::default()).await;
    h.applied();
    let running = h
        .handle
        .wait_for(seq, |s| s.status == ComputeStatus::Running)
        .await;
    assert_eq!(*running.jwks, keys("new"));
}

#[tokio::test]
async fn operations_are_refused_or_cancelled_never_lost() {
    let h = start(JwkSet::default());
    // Not running: a catalog request is refused, and its reply is dropped with it.
    let refused = h.handle.operate(Operation::Insights).await;
    assert!(
        matches!(
            refused,
            Err(OperateError::Refused(RequestError::Rejected(_)))
        ),
        "{refused:?}"
    );
    // An inspection runs in any live status; a termination cancels it.
    let handle = h.handle.clone();
    let inspect = tokio::spawn(async move { handle.operate(Operation::DbsAndRoles).await });
    let wait = h
        .handle
        .wait_for(0, |_| h.jobs().contains(&"operation".into()));
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap();
    h.handle
        .request(Input::Event(Event::TerminateRequested {
            mode: TerminateMode::Immediate,
        }))
        .await
        .unwrap();
    let cancelled = inspect.await.unwrap();
    assert!(
        matches!(cancelled, Err(OperateError::Cancelled)),
        "{cancelled:?}"
    );
    let (code, jobs) = h.exit().await;
    assert_eq!(code, 0);
    assert_eq!(jobs, ["operation", "stop immediate", "shutdown"]);
}

/// A promotion is `promoting` once accepted; a termination ends it as `failed` for its callers
/// (the effect, cancelled, would never say).
#[tokio::test]
async fn a_termination_answers_the_callers_of_a_promotion() {
    let h = start(JwkSet::default());
    h.configure(JwkSet::default()).await;
    h.applied();
    h.status(ComputeStatus::Running).await;
    let promotion = || {
        Input::Promote(Promotion {
            spec: spec(),
            wal_flush_lsn: crate::spec::Lsn(0x1000),
        })
    };
    let seq = h.handle.request(promotion()).await.unwrap();
    assert_eq!(h.handle.snapshot().promotion, PromoteState::Promoting);
    assert_eq!(h.handle.snapshot().status, ComputeStatus::Running);
    assert!(
        h.handle.request(promotion()).await.is_err(),
        "one promotion at a time"
    );
    h.handle
        .request(Input::Event(Event::TerminateRequested {
            mode: TerminateMode::Fast,
        }))
        .await
        .unwrap();
    let ended = h.handle.wait_for(seq, |s| s.promotion.is_final()).await;
    match &ended.promotion {
        PromoteState::Failed { error } => assert!(error.contains("termination"), "{error}"),
        other => panic!("{other:?}"),
    }
    let (_, jobs) = h.exit().await;
    assert_eq!(
        jobs,
        [
            "configure running=false",
            "start monitor",
            "promote",
            "stop fast",
            "shutdown"
        ]
    );
}
