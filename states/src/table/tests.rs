use std::collections::{BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::machine::sample;
use crate::{
    Command, Compute, Event, OpRef, PostmasterExit, SpecOrigin, SpecRef, SpecSource, TerminateMode,
};

fn startup_spec(n: u64) -> Event {
    Event::SpecReceived {
        spec: SpecRef(n),
        source: SpecSource::File,
    }
}

fn configure_spec(n: u64) -> Event {
    Event::SpecReceived {
        spec: SpecRef(n),
        source: SpecSource::Configure,
    }
}

fn refreshed_spec(n: u64) -> Event {
    Event::SpecReceived {
        spec: SpecRef(n),
        source: SpecSource::Refresh,
    }
}

/// An event of each kind; in `TerminationPending` (fast) the sample termination is immediate,
/// so that the escalation's conditional `Stop` is exercised.
fn sample_event(kind: EventKind) -> Event {
    match kind {
        EventKind::SpecReceived { origin } => match origin {
            SpecOrigin::Startup => startup_spec(1),
            SpecOrigin::Configure => configure_spec(2),
            SpecOrigin::Refresh => refreshed_spec(3),
        },
        EventKind::PrestartRequested => Event::PrestartRequested,
        EventKind::PromoteRequested => Event::PromoteRequested { spec: SpecRef(4) },
        EventKind::Promoted => Event::Promoted,
        EventKind::PromotionFailed => Event::PromotionFailed {
            error: "replay did not reach 0/3000000 within 20s".into(),
        },
        EventKind::RefreshRequested => Event::RefreshRequested,
        EventKind::InspectRequested => Event::InspectRequested { op: OpRef(1) },
        EventKind::CatalogRequested => Event::CatalogRequested { op: OpRef(2) },
        EventKind::FileCacheResizeRequested => Event::FileCacheResizeRequested { op: OpRef(3) },
        EventKind::ConfigurationStarted => Event::ConfigurationStarted,
        EventKind::PostgresStarted => Event::PostgresStarted,
        EventKind::StartFailed => Event::StartFailed {
            error: "initdb failed".into(),
        },
        EventKind::ConfigurationApplied => Event::ConfigurationApplied,
        EventKind::ConfigurationFailed => Event::ConfigurationFailed {
            error: "role \"x\" does not exist".into(),
        },
        EventKind::TerminateRequested => Event::TerminateRequested {
            mode: TerminateMode::Immediate,
        },
        EventKind::PostmasterExited => Event::PostmasterExited {
            exit: PostmasterExit::Signal(9),
        },
        EventKind::Stopped => Event::Stopped,
        EventKind::ActivityObserved => Event::ActivityObserved { at: 1_000 },
        EventKind::PostgresReachable => Event::PostgresReachable { at: 2_000 },
        EventKind::PostgresUnreachable => Event::PostgresUnreachable {
            at: 3_000,
            error: "connection refused".into(),
        },
    }
}

/// Every (state, event) pair: the statig handlers do what the table says, nothing more: the
/// target state, and the commands of the edge, in order.
#[test]
fn handlers_agree_with_table() {
    let mut mismatches = Vec::new();
    for from in StateKind::ALL {
        for on in EventKind::ALL {
            let mut compute = sample::in_state(from);
            let got = compute.handle(&sample_event(on));
            let commands = |handled: &crate::Handled| {
                let kinds: Vec<_> = handled.commands.iter().map(Command::kind).collect();
                find(from, on).is_some_and(|edge| edge.commands == kinds.as_slice())
            };
            let ok = match (&got, expected(from, on)) {
                (Err(rejection), None) => rejection.state == from && compute.state() == from,
                (Ok(handled), Some(Target::Stay)) => {
                    handled.transition.is_none() && compute.state() == from && commands(handled)
                }
                (Ok(handled), Some(Target::To(to))) => {
                    handled.transition == Some((from, to))
                        && compute.state() == to
                        && commands(handled)
                }
                _ => false,
            };
            if !ok {
                mismatches.push(format!(
                    "{} + {}: statig={:?} table={:?}",
                    from.name(),
                    on.name(),
                    got,
                    expected(from, on)
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn no_pair_is_listed_twice() {
    let mut seen = BTreeSet::new();
    for e in TRANSITIONS {
        assert!(
            seen.insert((e.from, e.on)),
            "{:?} + {:?} twice",
            e.from,
            e.on
        );
    }
}

#[test]
fn seed_edges_exist() {
    use StateKind::*;
    let seed = [
        (Empty, ConfigurationPending),
        (ConfigurationPending, Configuration),
        (Configuration, Running),
        (Configuration, Failed),
        (Empty, Init),
        (Init, Running),
        (Init, Failed),
        (Empty, TerminationPending),
        (Running, TerminationPending),
        (TerminationPending, Terminated),
        (Running, ConfigurationPending),
    ];
    for (from, to) in seed {
        assert!(
            TRANSITIONS
                .iter()
                .any(|e| e.from == from && e.target == Target::To(to)),
            "missing seed edge {from:?} -> {to:?}"
        );
    }
}

fn successors(from: StateKind) -> impl Iterator<Item = StateKind> {
    TRANSITIONS.iter().filter_map(move |e| match e.target {
        Target::To(to) if e.from == from => Some(to),
        _ => None,
    })
}

fn reachable_from(start: StateKind) -> BTreeSet<StateKind> {
    let mut seen = BTreeSet::from([start]);
    let mut queue = VecDeque::from([start]);
    while let Some(s) = queue.pop_front() {
        for next in successors(s) {
            if seen.insert(next) {
                queue.push_back(next);
            }
        }
    }
    seen
}

#[test]
fn every_state_is_reachable_from_empty() {
    let reachable = reachable_from(StateKind::Empty);
    for s in StateKind::ALL {
        assert!(reachable.contains(&s), "{s:?} is unreachable");
    }
}

#[test]
fn every_live_state_terminates_directly() {
    for s in StateKind::ALL.into_iter().filter(|s| s.is_live()) {
        assert_eq!(
            expected(s, EventKind::TerminateRequested),
            Some(Target::To(StateKind::TerminationPending)),
            "{s:?} cannot be terminated"
        );
        assert!(reachable_from(s).contains(&StateKind::Terminated));
    }
}

#[test]
fn termination_escalates_but_never_softens() {
    let mut compute = sample::in_state(StateKind::Running);
    let fast = Event::TerminateRequested {
        mode: TerminateMode::Fast,
    };
    let immediate = Event::TerminateRequested {
        mode: TerminateMode::Immediate,
    };
    let first = compute.handle(&fast).unwrap();
    assert_eq!(
        first.commands,
        vec![Command::Stop {
            mode: TerminateMode::Fast
        }]
    );
    let escalated = compute.handle(&immediate).unwrap();
    assert_eq!(
        escalated.commands,
        vec![Command::Stop {
            mode: TerminateMode::Immediate
        }]
    );
    assert_eq!(
        compute.status().to_string(),
        "termination-pending-immediate"
    );
    assert!(compute.handle(&fast).unwrap().commands.is_empty());
    assert_eq!(
        compute.status().to_string(),
        "termination-pending-immediate"
    );
}

#[test]
fn a_crash_fails_the_compute_and_exits_with_postgres_code() {
    let mut compute = sample::in_state(StateKind::Running);
    let handled = compute
        .handle(&Event::PostmasterExited {
            exit: PostmasterExit::Code(3),
        })
        .unwrap();
    assert_eq!(handled.commands, vec![Command::Exit { code: 3 }]);
    assert_eq!(compute.state(), StateKind::Failed);
    assert_eq!(
        compute.error(),
        Some("postgres exited unexpectedly (exit code 3)")
    );
}

#[test]
fn reconfigure_knows_postgres_runs_and_a_start_does_not() {
    let mut compute = Compute::new();
    let cmds = compute.handle(&configure_spec(7)).unwrap().commands;
    assert_eq!(
        cmds,
        vec![Command::Configure {
            spec: SpecRef(7),
            postgres_running: false
        }]
    );
    compute.handle(&Event::ConfigurationStarted).unwrap();
    compute.handle(&Event::PostgresStarted).unwrap();
    compute.handle(&Event::ConfigurationApplied).unwrap();
    let cmds = compute.handle(&configure_spec(8)).unwrap().commands;
    assert_eq!(
        cmds,
        vec![Command::Configure {
            spec: SpecRef(8),
            postgres_running: true
        }]
    );
}

#[test]
fn running_clears_the_error_of_a_failed_attempt() {
    let mut compute = sample::in_state(StateKind::Failed);
    compute.handle(&configure_spec(1)).unwrap();
    compute.handle(&Event::ConfigurationStarted).unwrap();
    compute
        .handle(&Event::ConfigurationFailed {
            error: "bad".into(),
        })
        .unwrap();
    assert_eq!(compute.error(), Some("bad"));
    compute.handle(&configure_spec(2)).unwrap();
    compute.handle(&Event::ConfigurationStarted).unwrap();
    compute.handle(&Event::ConfigurationApplied).unwrap();
    assert_eq!(compute.state(), StateKind::Running);
    assert_eq!(compute.error(), None);
}

#[test]
fn diagram_has_every_edge() {
    let diagram = crate::mermaid::state_diagram();
    assert!(diagram.starts_with("stateDiagram-v2\n"));
    let observations = TRANSITIONS.iter().filter(|e| e.on.is_observation()).count();
    let observing: BTreeSet<_> = TRANSITIONS
        .iter()
        .filter(|e| e.on.is_observation())
        .map(|e| e.from)
        .collect();
    assert_eq!(
        diagram.lines().count(),
        TRANSITIONS.len() - observations + observing.len() + 3
    );
    assert!(diagram.contains("    Running --> Running: monitor (last_active, downtime)"));
    assert!(diagram.contains(
        "    Empty --> ConfigurationPending: SpecReceived (POST /configure) / Configure\n"
    ));
    assert!(diagram.contains("    TerminationPending --> Terminated: Stopped (exit 0) / Exit\n"));
}

fn any_event() -> impl Strategy<Value = Event> {
    let mode = prop_oneof![Just(TerminateMode::Fast), Just(TerminateMode::Immediate)];
    let exit = prop_oneof![
        any::<i32>().prop_map(PostmasterExit::Code),
        (1..64i32).prop_map(PostmasterExit::Signal)
    ];
    prop_oneof![
        any::<u64>().prop_map(startup_spec),
        any::<u64>().prop_map(configure_spec),
        any::<u64>().prop_map(refreshed_spec),
        any::<u64>().prop_map(|n| Event::PromoteRequested { spec: SpecRef(n) }),
        Just(Event::Promoted),
        Just(Event::PromotionFailed {
            error: "not a replica".into()
        }),
        Just(Event::RefreshRequested),
        Just(Event::PrestartRequested),
        any::<u64>().prop_map(|n| Event::InspectRequested { op: OpRef(n) }),
        any::<u64>().prop_map(|n| Event::CatalogRequested { op: OpRef(n) }),
        any::<u64>().prop_map(|n| Event::FileCacheResizeRequested { op: OpRef(n) }),
        Just(Event::ConfigurationStarted),
        Just(Event::PostgresStarted),
        ".*".prop_map(|error| Event::StartFailed { error }),
        Just(Event::ConfigurationApplied),
        ".*".prop_map(|error| Event::ConfigurationFailed { error }),
        mode.prop_map(|mode| Event::TerminateRequested { mode }),
        exit.prop_map(|exit| Event::PostmasterExited { exit }),
        Just(Event::Stopped),
        any::<i64>().prop_map(|at| Event::ActivityObserved { at }),
        any::<i64>().prop_map(|at| Event::PostgresReachable { at }),
        (any::<i64>(), ".*").prop_map(|(at, error)| Event::PostgresUnreachable { at, error }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// Random event sequences never panic, every rejection names the state it happened in and
    /// changes nothing, every accepted event does what the table says, and the invariants hold.
    #[test]
    fn random_sequences_follow_the_table(events in prop::collection::vec(any_event(), 0..40)) {
        let mut compute = Compute::new();
        for event in &events {
            let before = compute.state();
            let status = compute.status();
            match compute.handle(event) {
                Err(rejection) => {
                    prop_assert_eq!(rejection.state, before);
                    prop_assert_eq!(
                        rejection.to_string(),
                        format!("invalid compute status: {status}")
                    );
                    prop_assert_eq!(compute.state(), before);
                    prop_assert_eq!(compute.status(), status);
                    prop_assert_eq!(expected(before, event.kind()), None);
                }
                Ok(handled) => {
                    let target = expected(before, event.kind());
                    prop_assert!(target.is_some(), "{:?} accepted {:?}", before, event);
                    if let Some(Target::To(to)) = target {
                        prop_assert_eq!(compute.state(), to);
                    } else {
                        prop_assert_eq!(compute.state(), before);
                    }
                    let edge = find(before, event.kind()).unwrap();
                    for command in &handled.commands {
                        prop_assert!(edge.commands.contains(&command.kind()));
                        if let Command::Exit { code } = command {
                            let terminated = compute.state() == StateKind::Terminated;
                            prop_assert_eq!(code == &0, terminated);
                        }
                    }
                }
            }
            let monitoring = compute.monitoring();
            if monitoring.reachable_now() != Some(false) {
                prop_assert_eq!(monitoring.current_downtime_ms(), 0);
            }
            match compute.state() {
                StateKind::Running => prop_assert!(compute.error().is_none()),
                StateKind::Failed => prop_assert!(compute.error().is_some()),
                _ => {}
            }
        }
    }
}

#[test]
fn the_monitor_starts_once_at_the_first_running_and_survives_reconfiguration() {
    let mut compute = Compute::new();
    compute.handle(&startup_spec(1)).unwrap();
    compute.handle(&Event::PostgresStarted).unwrap();
    let running = compute.handle(&Event::ConfigurationApplied).unwrap();
    assert_eq!(running.commands, vec![Command::StartMonitor]);
    compute.handle(&configure_spec(2)).unwrap();
    compute.handle(&Event::ConfigurationStarted).unwrap();
    compute
        .handle(&Event::ConfigurationFailed {
            error: "bad".into(),
        })
        .unwrap();
    // Postgres still runs after a failed reconfiguration: observations still count.
    compute
        .handle(&Event::PostgresReachable { at: 9_500 })
        .unwrap();
    compute
        .handle(&Event::PostgresUnreachable {
            at: 10_000,
            error: "timeout".into(),
        })
        .unwrap();
    compute
        .handle(&Event::PostgresUnreachable {
            at: 10_500,
            error: "timeout".into(),
        })
        .unwrap();
    assert_eq!(compute.monitoring().current_downtime_ms(), 1_000);
    compute.handle(&configure_spec(3)).unwrap();
    compute.handle(&Event::ConfigurationStarted).unwrap();
    let again = compute.handle(&Event::ConfigurationApplied).unwrap();
    assert!(again.commands.is_empty(), "{:?}", again.commands);
    compute
        .handle(&Event::PostgresReachable { at: 11_000 })
        .unwrap();
    compute
        .handle(&Event::ActivityObserved { at: 10_900 })
        .unwrap();
    let m = compute.monitoring();
    assert_eq!(
        (
            m.current_downtime_ms(),
            m.total_downtime_ms(),
            m.last_active()
        ),
        (0, 1_000, Some(10_900))
    );
}

#[test]
fn observations_after_termination_are_rejected_and_change_nothing() {
    let mut compute = sample::in_state(StateKind::Running);
    compute
        .handle(&Event::PostgresReachable { at: 1_000 })
        .unwrap();
    compute
        .handle(&Event::TerminateRequested {
            mode: TerminateMode::Fast,
        })
        .unwrap();
    let rejected = compute.handle(&Event::PostgresUnreachable {
        at: 5_000,
        error: "shutting down".into(),
    });
    assert!(rejected.is_err());
    assert_eq!(compute.monitoring().total_downtime_ms(), 0);
    assert_eq!(compute.monitoring().current_downtime_ms(), 0);
}

#[test]
fn catalog_requests_need_running_and_inspection_any_live_status() {
    for from in StateKind::ALL {
        let mut compute = sample::in_state(from);
        let catalog = compute.handle(&Event::CatalogRequested { op: OpRef(1) });
        let running = matches!(from, StateKind::Running | StateKind::Promotion);
        assert_eq!(catalog.is_ok(), running, "{from:?}");
        let inspect = compute.handle(&Event::InspectRequested { op: OpRef(2) });
        assert_eq!(inspect.is_ok(), from.is_live(), "{from:?}");
        if let Ok(handled) = inspect {
            assert_eq!(
                handled.commands,
                vec![Command::RunOperation { op: OpRef(2) }]
            );
        }
    }
}

#[test]
fn a_startup_spec_is_refused_once_the_compute_has_one() {
    let mut compute = Compute::new();
    compute.handle(&startup_spec(1)).unwrap();
    assert!(compute.handle(&startup_spec(2)).is_err());
    assert!(
        compute.handle(&configure_spec(3)).is_err(),
        "init accepts no /configure"
    );
}

#[test]
fn a_failed_promotion_is_the_running_replica_it_was() {
    let mut compute = sample::in_state(StateKind::Running);
    let handled = compute
        .handle(&Event::PromoteRequested { spec: SpecRef(9) })
        .unwrap();
    assert_eq!(
        handled.commands,
        vec![Command::Promote { spec: SpecRef(9) }]
    );
    assert_eq!(compute.status(), crate::ComputeStatus::Running, "as Neon");
    assert!(
        compute.handle(&configure_spec(10)).is_err(),
        "one change at a time"
    );
    let handled = compute
        .handle(&Event::PromotionFailed {
            error: "not a replica".into(),
        })
        .unwrap();
    assert!(handled.commands.is_empty(), "the monitor runs already");
    assert_eq!(compute.state(), StateKind::Running);
    assert_eq!(compute.error(), None, "the compute did not fail");
}

#[test]
fn a_promoted_compute_applies_its_spec_like_a_configure() {
    let mut compute = sample::in_state(StateKind::Promotion);
    compute.handle(&Event::Promoted).unwrap();
    assert_eq!(compute.state(), StateKind::Configuration);
    compute
        .handle(&Event::ConfigurationFailed {
            error: "role x".into(),
        })
        .unwrap();
    assert_eq!(compute.state(), StateKind::Failed);
    assert_eq!(compute.error(), Some("role x"));
}

#[test]
fn a_refresh_fetches_then_configures_and_coalesces() {
    let mut compute = sample::in_state(StateKind::Running);
    let handled = compute.handle(&Event::RefreshRequested).unwrap();
    assert_eq!(handled.commands, vec![Command::FetchSpec]);
    assert_eq!(
        compute.status(),
        crate::ComputeStatus::RefreshConfigurationPending
    );
    // A second call while one is under way changes nothing.
    let again = compute.handle(&Event::RefreshRequested).unwrap();
    assert!(again.commands.is_empty() && again.transition.is_none());
    assert!(compute.handle(&configure_spec(1)).is_err());
    let handled = compute.handle(&refreshed_spec(2)).unwrap();
    assert_eq!(
        handled.commands,
        vec![Command::Configure {
            spec: SpecRef(2),
            postgres_running: true
        }]
    );
    compute.handle(&Event::ConfigurationStarted).unwrap();
    assert_eq!(compute.status(), crate::ComputeStatus::RefreshConfiguration);
    compute.handle(&Event::ConfigurationApplied).unwrap();
    assert_eq!(compute.state(), StateKind::Running);
    // A refreshed spec outside a refresh is refused.
    assert!(compute.handle(&refreshed_spec(3)).is_err());
}
