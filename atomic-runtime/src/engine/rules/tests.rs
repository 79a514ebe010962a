//! The rules on plain state, without a database: each test names the rule it checks, and the
//! E, X, F, C, Q and T rules are exercised as tables.

use super::*;
use crate::engine::state::Callback;
use crate::options::{BeginMode, Isolation};
use std::time::Duration;

// --- Fixtures -------------------------------------------------------------------------------

/// Connection ids for the tests: distinct addresses, never dereferenced.
fn connection(n: usize) -> ConnectionId {
    static IDS: [u8; 4] = [0; 4];
    ConnectionId::of(&IDS[n])
}

fn fresh() -> AliasState {
    AliasState::new("default", 0)
}

fn options() -> BlockOptions<'static> {
    BlockOptions::nested("default")
}

fn durable() -> BlockOptions<'static> {
    BlockOptions {
        durable: true,
        ..options()
    }
}

fn no_savepoint() -> BlockOptions<'static> {
    BlockOptions {
        savepoint: false,
        ..options()
    }
}

fn serializable() -> BlockOptions<'static> {
    BlockOptions {
        begin: BeginOptions {
            isolation: Some(Isolation::Serializable),
            ..BeginOptions::DEFAULT
        },
        ..options()
    }
}

/// The caller's connection `n` at `depth`, with nothing foreign open unless `depth > 0`.
fn caller(n: usize, depth: u32) -> CallersConnection {
    CallersConnection {
        id: connection(n),
        depth,
        foreign: foreign_transaction(depth, || false),
    }
}

/// An ambient outermost block, as the executor opens it (without a real connection).
fn ambient_outermost(state: &mut AliasState) -> Entered {
    assert!(matches!(
        plan_enter(state, Others::of(&mut []), &options(), None),
        Ok(EnterPlan::CheckOut)
    ));
    state.slot = Slot::Held(connection(0));
    state.block_connection = Some(connection(0));
    push_checked_out(state, 0, Foreign::None, &options(), BeginOptionsUse::Plain)
}

/// An explicit-mode block on connection 0 at the depth the state's blocks run at.
fn explicit(state: &mut AliasState, options: &BlockOptions<'_>) -> Result<Entered, Error> {
    let depth = state.block_depth();
    match plan_enter(state, Others::of(&mut []), options, Some(&caller(0, depth)))? {
        EnterPlan::OnCallersConnection { entered, .. } | EnterPlan::Merged(entered) => Ok(entered),
        other => panic!("unexpected plan {other:?}"),
    }
}

fn callback() -> Callback {
    Callback::new(|| {}, false)
}

fn kind(plan: &Result<EnterPlan, Error>) -> &'static str {
    match plan {
        Ok(EnterPlan::CheckOut) => "check out",
        Ok(EnterPlan::OnCallersConnection { .. }) => "begin on caller's connection",
        Ok(EnterPlan::AmbientSavepoint) => "ambient savepoint",
        Ok(EnterPlan::Merged(_)) => "merged",
        Err(Error::DurableNested { .. }) => "DurableNested",
        Err(Error::AliasInUse { .. }) => "AliasInUse",
        Err(Error::ConnectionInUse { .. }) => "ConnectionInUse",
        Err(Error::AliasBoundToExplicitConnection { .. }) => "AliasBoundToExplicitConnection",
        Err(Error::BeginOptionsNested { .. }) => "BeginOptionsNested",
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

// --- E: entering ----------------------------------------------------------------------------

#[test]
fn e_rules_as_a_table() {
    // (situation, how it was set up, options, ambient?, expected)
    type Setup = fn(&mut AliasState);
    let nothing: Setup = |_| {};
    let ambient_block: Setup = |state| drop(ambient_outermost(state));
    let explicit_block: Setup = |state| drop(explicit(state, &options()).unwrap());
    let lent: Setup = |state| state.slot = Slot::Lent(connection(1));
    let marked: Setup = |state| {
        drop(ambient_outermost(state));
        state.needs_rollback = true;
    };
    let cases: &[(&str, Setup, BlockOptions<'static>, bool, &str)] = &[
        (
            "E2 ambient outermost",
            nothing,
            options(),
            true,
            "check out",
        ),
        (
            "E2 explicit outermost",
            nothing,
            options(),
            false,
            "begin on caller's connection",
        ),
        (
            "E3 ambient nested",
            ambient_block,
            options(),
            true,
            "ambient savepoint",
        ),
        (
            "E3 explicit nested",
            explicit_block,
            options(),
            false,
            "begin on caller's connection",
        ),
        (
            "E3 savepoint = false",
            ambient_block,
            no_savepoint(),
            true,
            "merged",
        ),
        (
            "E3 no savepoint once marked",
            marked,
            options(),
            true,
            "merged",
        ),
        (
            "E1 durable nested",
            ambient_block,
            durable(),
            true,
            "DurableNested",
        ),
        (
            "E1 durable outermost",
            nothing,
            durable(),
            true,
            "check out",
        ),
        (
            "options nested",
            ambient_block,
            serializable(),
            true,
            "BeginOptionsNested",
        ),
        (
            "ambient while lent",
            lent,
            options(),
            true,
            "ConnectionInUse",
        ),
        (
            "ambient while explicit",
            explicit_block,
            options(),
            true,
            "AliasBoundToExplicitConnection",
        ),
    ];
    for (situation, setup, options, ambient, expected) in cases {
        let mut state = fresh();
        setup(&mut state);
        let depth = state.block_depth();
        let plan = if *ambient {
            plan_enter(&mut state, Others::of(&mut []), options, None)
        } else {
            plan_enter(
                &mut state,
                Others::of(&mut []),
                options,
                Some(&caller(0, depth)),
            )
        };
        assert_eq!(kind(&plan), *expected, "{situation}");
    }
}

#[test]
fn e1_durable_refusal_changes_nothing() {
    let mut state = fresh();
    let _outer = ambient_outermost(&mut state);
    assert!(plan_enter(&mut state, Others::of(&mut []), &durable(), None).is_err());
    assert_eq!(state.blocks.len(), 1);
    assert!(!state.needs_rollback, "the outer block is not marked");
}

#[test]
fn e1_durable_inside_the_callers_own_transaction_is_refused() {
    let mut state = fresh();
    let plan = plan_enter(
        &mut state,
        Others::of(&mut []),
        &durable(),
        Some(&caller(0, 1)),
    );
    assert_eq!(kind(&plan), "DurableNested");
    assert!(state.blocks.is_empty());
}

#[test]
fn e2_clears_the_flag_of_a_former_transaction_and_binds_the_callers_connection() {
    let mut state = fresh();
    state.needs_rollback = true;
    state.slot = Slot::Lent(connection(1));
    let entered = explicit(&mut state, &options()).unwrap();
    assert!(!state.needs_rollback);
    assert_eq!(state.slot, Slot::Explicit(connection(0)));
    assert_eq!(state.block_connection, Some(connection(0)));
    assert_eq!(state.block_depth(), 1);
    unpush(&mut state, &entered);
    assert_eq!(
        state.slot,
        Slot::Lent(connection(1)),
        "the lent marker comes back"
    );
    assert!(state.blocks.is_empty());
}

#[test]
fn e3_an_explicit_block_on_another_connection_is_alias_in_use() {
    let mut state = fresh();
    let _outer = explicit(&mut state, &options()).unwrap();
    let plan = plan_enter(
        &mut state,
        Others::of(&mut []),
        &options(),
        Some(&caller(1, 1)),
    );
    assert_eq!(kind(&plan), "AliasInUse");
}

#[test]
fn begin_options_apply_only_to_a_real_begin() {
    let cases = [
        (Foreign::None, Ok(BeginOptionsUse::Apply)),
        (
            Foreign::DieselTestTransaction,
            Ok(BeginOptionsUse::IgnoredInTest),
        ),
        (Foreign::CallersTransaction, Err("BeginOptionsNested")),
    ];
    for (foreign, expected) in cases {
        let got = begin_outermost(&serializable(), foreign).map_err(|error| match error {
            Error::BeginOptionsNested { .. } => "BeginOptionsNested",
            other => panic!("{other:?}"),
        });
        assert_eq!(got, expected, "{foreign:?}");
    }
    assert_eq!(
        begin_outermost(&options(), Foreign::CallersTransaction).ok(),
        Some(BeginOptionsUse::Plain)
    );
    let immediate = BlockOptions {
        begin: BeginOptions {
            mode: Some(BeginMode::Immediate),
            ..BeginOptions::DEFAULT
        },
        ..options()
    };
    assert_eq!(
        begin_outermost(&immediate, Foreign::None).ok(),
        Some(BeginOptionsUse::Apply)
    );
}

#[test]
fn foreign_transactions_are_told_apart() {
    assert_eq!(
        foreign_transaction(0, || panic!("not asked")),
        Foreign::None
    );
    assert_eq!(
        foreign_transaction(1, || true),
        Foreign::DieselTestTransaction
    );
    assert_eq!(
        foreign_transaction(2, || false),
        Foreign::CallersTransaction
    );
}

// --- X: leaving -----------------------------------------------------------------------------

#[test]
fn x_rules_as_a_table() {
    // (situation, nested block's options, body succeeded, flag set, expected action, flag after)
    let cases: &[(&str, BlockOptions<'static>, bool, bool, &str, bool)] = &[
        (
            "X1 savepoint released",
            options(),
            true,
            false,
            "release",
            false,
        ),
        (
            "X2 savepoint rolled back on Err",
            options(),
            false,
            false,
            "rollback to",
            false,
        ),
        (
            "X2 savepoint rolled back when marked",
            options(),
            true,
            true,
            "rollback to",
            false,
        ),
        (
            "X1 merged joins its parent",
            no_savepoint(),
            true,
            false,
            "done",
            false,
        ),
        (
            "X2 merged marks its parent",
            no_savepoint(),
            false,
            false,
            "done",
            true,
        ),
        (
            "X2 merged marked marks its parent",
            no_savepoint(),
            true,
            true,
            "done",
            true,
        ),
    ];
    for (situation, options, body_succeeded, flag, expected, flag_after) in cases {
        let mut state = fresh();
        let _outer = explicit(&mut state, &BlockOptions::nested("default")).unwrap();
        let inner = explicit(&mut state, options).unwrap();
        state.needs_rollback = *flag;
        let plan = plan_leave(&mut state, &inner, *body_succeeded);
        let action = match plan {
            Leave::Savepoint { success: true, .. } => "release",
            Leave::Savepoint { success: false, .. } => "rollback to",
            Leave::Done => "done",
            _ => "other",
        };
        assert_eq!(action, *expected, "{situation}");
        assert_eq!(state.needs_rollback, *flag_after, "{situation}");
    }
}

#[test]
fn x1_outermost_commits_and_resets_the_state_before_its_callbacks_run() {
    let mut state = fresh();
    let outer = explicit(&mut state, &options()).unwrap();
    state.callbacks.push(callback());
    let plan = plan_leave(&mut state, &outer, true);
    match plan {
        Leave::Outermost {
            success: true,
            callbacks,
            route: Route::AfterLend { .. } | Route::RunNow,
            ..
        } => assert_eq!(callbacks.len(), 1),
        _ => panic!("expected a COMMIT"),
    }
    assert!(!state.in_atomic_block());
    assert!(state.callbacks.is_empty());
    assert_eq!(state.slot, Slot::Empty);
}

#[test]
fn x2_outermost_with_the_flag_rolls_back_silently() {
    let mut state = fresh();
    let outer = ambient_outermost(&mut state);
    state.needs_rollback = true;
    let plan = plan_leave(&mut state, &outer, true);
    assert!(matches!(plan, Leave::Outermost { success: false, .. }));
    assert!(!state.needs_rollback);
}

#[test]
fn a_block_ended_elsewhere_is_lost() {
    let mut state = fresh();
    let outer = ambient_outermost(&mut state);
    let inner = explicit(&mut state, &no_savepoint());
    drop(inner);
    // The outer block is left while the inner one is still open.
    assert!(matches!(plan_leave(&mut state, &outer, true), Leave::Lost));
}

#[test]
fn levels_a_panic_left_open_are_counted_above_the_block() {
    assert_eq!(levels_left_open(Some(3), 1), 2);
    assert_eq!(levels_left_open(Some(1), 1), 0);
    assert_eq!(
        levels_left_open(Some(0), 1),
        0,
        "diesel noticed the end itself"
    );
    assert_eq!(
        levels_left_open(None, 1),
        0,
        "a broken manager: nothing to close"
    );
}

#[test]
fn x4_release_recovery_as_a_table() {
    let cases = [
        (Some(3), 2, ReleaseRecovery::RollbackTo),
        (Some(2), 2, ReleaseRecovery::ReleaseOnly),
        (Some(1), 2, ReleaseRecovery::Lost),
        (None, 2, ReleaseRecovery::Lost),
    ];
    for (depth_now, depth_before, expected) in cases {
        assert_eq!(recover_release(depth_now, depth_before), expected);
    }
    assert!(rollback_after_failed_commit(Some(1), 0));
    assert!(!rollback_after_failed_commit(Some(0), 0));
    assert!(!rollback_after_failed_commit(None, 0));
}

#[test]
fn x4_a_failed_release_drops_the_savepoints_callbacks_and_may_mark_the_transaction() {
    let mut state = fresh();
    let _outer = ambient_outermost(&mut state);
    state.callbacks.push(callback());
    let mark = state.callbacks.len();
    state.callbacks.push(callback());
    let released = after_savepoint(&mut state, mark, SavepointExit::default());
    assert!(released.is_empty());
    let dropped = after_savepoint(
        &mut state,
        mark,
        SavepointExit {
            release_failed: true,
            transaction_lost: true,
        },
    );
    assert_eq!(dropped.len(), 1);
    assert_eq!(state.callbacks.len(), 1);
    assert!(state.needs_rollback);
}

// --- F: the rollback flag ---------------------------------------------------------------------

#[test]
fn f_rules_as_a_table() {
    let mut state = fresh();
    // F1: outside a block, both are refused.
    assert!(matches!(
        set_rollback(&mut state, true),
        Err(Error::NotInAtomicBlock {
            operation: "set_rollback",
            ..
        })
    ));
    assert!(matches!(
        get_rollback(Some(&state), "default"),
        Err(Error::NotInAtomicBlock {
            operation: "get_rollback",
            ..
        })
    ));
    assert!(get_rollback::<SyncFlavor>(None, "default").is_err());
    // F2: set, read, cancel.
    let _outer = ambient_outermost(&mut state);
    for flag in [true, false, true] {
        set_rollback(&mut state, flag).unwrap();
        assert_eq!(get_rollback(Some(&state), "default").unwrap(), flag);
    }
    // F3: ambient access is refused while marked.
    assert!(matches!(lend(&state), Err(Error::TransactionManagement(_))));
    set_rollback(&mut state, false).unwrap();
    assert_eq!(lend(&state).unwrap(), Lend::FromBlock);
}

#[test]
fn lending_as_a_table() {
    let cases: &[(&str, Slot, Result<Lend, &str>)] = &[
        ("outside a block", Slot::Empty, Ok(Lend::CheckOut)),
        (
            "a block holds it",
            Slot::Held(connection(0)),
            Ok(Lend::FromBlock),
        ),
        ("lent already", Slot::Lent(connection(0)), Err("in use")),
        (
            "explicit block",
            Slot::Explicit(connection(0)),
            Err("bound"),
        ),
    ];
    for (situation, slot, expected) in cases {
        let mut state = fresh();
        state.slot = *slot;
        let got = lend(&state).map_err(|error| match error {
            Error::ConnectionInUse { .. } => "in use",
            Error::AliasBoundToExplicitConnection { .. } => "bound",
            other => panic!("{other:?}"),
        });
        assert_eq!(got, *expected, "{situation}");
    }
}

#[test]
fn giving_back_returns_to_the_block_or_to_the_pool() {
    let mut state = fresh();
    state.slot = Slot::Lent(connection(0));
    let back = give_back(&mut state, true);
    assert!(back.to_block);
    let back = give_back(&mut state, false);
    assert!(!back.to_block);
    assert_eq!(state.slot, Slot::Empty);
    // T1: a block that ended while its connection was lent leaves it to be rolled back.
    state.slot = Slot::Lent(connection(0));
    state.orphaned_at_depth = Some(0);
    let back = give_back(&mut state, true);
    assert!(!back.to_block);
    assert_eq!(back.orphaned_at_depth, Some(0));
    assert_eq!(state.slot, Slot::Empty);
}

// --- C: on_commit -----------------------------------------------------------------------------

fn on_commit_outcome(state: &mut AliasState) -> &'static str {
    match on_commit(state, Others::of(&mut []), callback()) {
        OnCommit::Queued => "queued",
        OnCommit::RunNow(_) => "now",
        OnCommit::Refused(_, _) => "refused",
    }
}

#[test]
fn c_rules_as_a_table() {
    type Setup = fn(&mut AliasState);
    let cases: &[(&str, Setup, &str)] = &[
        ("C1 outside a block: now", |_| {}, "now"),
        (
            "C1 inside a block: queued",
            |state| drop(ambient_outermost(state)),
            "queued",
        ),
        (
            "inside connection() outside a block: refused",
            |state| state.slot = Slot::Lent(connection(0)),
            "refused",
        ),
        (
            "inside the caller's own transaction: refused",
            |state| {
                let entered =
                    plan_enter(state, Others::of(&mut []), &options(), Some(&caller(0, 1)));
                assert!(entered.is_ok());
            },
            "refused",
        ),
        (
            "nested inside the caller's transaction inside a block: refused",
            |state| {
                drop(explicit(state, &options()).unwrap());
                // The caller's `conn.transaction` took the connection to depth 2.
                let plan = plan_enter(state, Others::of(&mut []), &options(), Some(&caller(0, 2)));
                assert!(plan.is_ok());
            },
            "refused",
        ),
        (
            "inside the caller's transaction on another alias's block: queued",
            |state| {
                let mut host = AliasState::new("other", 1);
                drop(ambient_outermost(&mut host));
                let mut others = [host];
                let inside = caller(0, 1);
                assert!(
                    plan_enter(state, Others::of(&mut others), &options(), Some(&inside)).is_ok()
                );
            },
            "queued",
        ),
        (
            "inside diesel's test transaction: queued (and never run)",
            |state| {
                let mut test = caller(0, 1);
                test.foreign = Foreign::DieselTestTransaction;
                assert!(plan_enter(state, Others::of(&mut []), &options(), Some(&test)).is_ok());
            },
            "queued",
        ),
    ];
    for (situation, setup, expected) in cases {
        let mut state = fresh();
        setup(&mut state);
        assert_eq!(on_commit_outcome(&mut state), *expected, "{situation}");
    }
}

#[test]
fn c2_a_rolled_back_savepoint_drops_its_callbacks_and_deeper_ones() {
    let mut state = fresh();
    let _outer = ambient_outermost(&mut state);
    state.callbacks.push(callback());
    // The ambient outermost holds connection 0, so an explicit block on it nests.
    let inner = explicit(&mut state, &options()).unwrap();
    state.callbacks.push(callback());
    state.callbacks.push(callback());
    let Leave::Savepoint { discarded, .. } = plan_leave(&mut state, &inner, false) else {
        panic!("a savepoint");
    };
    assert_eq!(discarded.len(), 2, "handed out to drop outside the borrow");
    assert_eq!(state.callbacks.len(), 1);
}

#[test]
fn c3_committed_callbacks_survive_only_a_commit_the_runtime_saw() {
    assert!(callbacks_survive(Foreign::None, true));
    assert!(callbacks_survive(Foreign::CallersTransaction, true));
    assert!(!callbacks_survive(Foreign::None, false));
    assert!(!callbacks_survive(Foreign::DieselTestTransaction, true));
}

#[test]
fn c3_callbacks_of_a_block_on_another_aliass_connection_join_its_queue() {
    let mut host = fresh();
    let _outer = ambient_outermost(&mut host);
    host.callbacks.push(callback());
    assert!(join_queue(&mut host, vec![callback(), callback()]).is_ok());
    assert_eq!(host.callbacks.len(), 3);
    let mut idle = fresh();
    assert_eq!(
        join_queue(&mut idle, vec![callback()]).map_err(|lost| lost.len()),
        Err(1)
    );
    assert!(
        hosts(&host, connection(0), 1),
        "its innermost block runs at that depth"
    );
    assert!(!hosts(&host, connection(0), 2), "a foreign level between");
    assert!(!hosts(&host, connection(1), 1), "another connection");
    // A host whose own commit is out of sight carries nothing.
    let mut inside_callers = fresh();
    assert!(
        plan_enter(
            &mut inside_callers,
            Others::of(&mut []),
            &options(),
            Some(&caller(0, 1))
        )
        .is_ok()
    );
    assert!(!hosts(&inside_callers, connection(0), 2));
}

#[test]
fn c3_callbacks_of_a_block_on_a_lent_connection_wait_for_it() {
    let mut state = fresh();
    state.slot = Slot::Lent(connection(1));
    let outer = explicit(&mut state, &options()).unwrap();
    state.callbacks.push(callback());
    let plan = plan_leave(&mut state, &outer, true);
    let Leave::Outermost {
        route, callbacks, ..
    } = plan
    else {
        panic!("outermost");
    };
    assert_eq!(
        route,
        Route::AfterLend {
            same_alias: true,
            connection: connection(0)
        }
    );
    assert_eq!(
        state.slot,
        Slot::Lent(connection(1)),
        "the lent marker is back"
    );
    assert!(defer_until_lend_ends(&mut state, true, connection(0), callbacks).is_ok());
    assert_eq!(give_back(&mut state, false).after_lend.len(), 1);
}

#[test]
fn t2_captured_callbacks_are_the_ones_since_the_mark() {
    let mut state = fresh();
    let _outer = ambient_outermost(&mut state);
    state.callbacks.push(callback());
    let mark = state.callbacks.len();
    state.callbacks.push(callback());
    assert_eq!(take_callbacks_since(&mut state, mark).len(), 1);
    assert_eq!(take_callbacks_since(&mut state, 10).len(), 0);
}

// --- T: test transactions ---------------------------------------------------------------------

#[test]
fn t1_a_durable_block_directly_inside_a_test_transaction_is_allowed() {
    let mut state = fresh();
    check_test_transaction_start(&state).unwrap();
    state.slot = Slot::Held(connection(0));
    state.block_connection = Some(connection(0));
    let test = push_test_transaction(&mut state, 0, Foreign::None);
    assert!(!refuses_durable(&state), "directly inside: allowed");
    let inner = explicit(&mut state, &options()).unwrap();
    assert!(refuses_durable(&state), "under a user block: refused");
    drop(plan_leave(&mut state, &inner, true));
    assert!(matches!(
        check_test_transaction_start(&state),
        Err(Error::TestTransactionNested { .. })
    ));
    let abandoned = abandon_from(&mut state, test.token).expect("the test's block");
    assert_eq!(abandoned.depth_before, 0);
    assert!(state.blocks.is_empty());
}

#[test]
fn t1_a_test_transaction_abandoned_while_lent_is_rolled_back_when_given_back() {
    let mut state = fresh();
    state.slot = Slot::Held(connection(0));
    state.block_connection = Some(connection(0));
    let test = push_test_transaction(&mut state, 0, Foreign::None);
    state.slot = Slot::Lent(connection(0));
    let plan = plan_leave(&mut state, &test, false);
    assert!(matches!(plan, Leave::Orphaned { success: false, .. }));
    assert_eq!(state.orphaned_at_depth, Some(0));
}

// --- Q: per-request transactions ---------------------------------------------------------------

#[test]
fn q_rules_as_a_table() {
    let mut scope = RequestScope::new();
    scope.aliases = vec![
        ("default".to_owned(), RequestTransaction::Pending),
        ("other".to_owned(), RequestTransaction::Pending),
    ];
    // Q1: pending counts as open; the first use begins it, once.
    assert!(scope.pending("default"));
    assert!(scope.begin_due("default"));
    assert!(!scope.begin_due("default"), "beginning: not again");
    assert!(!scope.pending("default"));
    scope.begun("default", None);
    assert!(scope.pending("default"), "a failed BEGIN is due again");
    // Q2: an exempt alias is never due, nor pending; exempting after the BEGIN is too late.
    scope.exempt.push("other");
    assert!(!scope.begin_due("other"));
    assert!(!scope.pending("other"));
    assert!(!scope.exempt_too_late("other"));
    scope.exempt.pop();
    assert!(scope.begin_due("other"));
    assert!(scope.exempt_too_late("other"));
    // Unknown aliases are none of the request's business.
    assert!(!scope.begin_due("replica"));
    assert!(!scope.pending("replica"));
    // Q3: the aliases end one by one, in registration order; the later ones stay in the
    // request meanwhile (a callback of the first may begin the second).
    scope.begun(
        "default",
        Some(Entered {
            token: BlockToken::next(),
            index: 0,
        }),
    );
    scope.begun("other", None);
    let (first, begun) = scope.end_next().unwrap();
    assert_eq!((first.as_str(), begun.is_some()), ("default", true));
    assert!(scope.pending("other"));
    assert!(scope.begin_due("other"));
    let (second, _) = scope.end_next().unwrap();
    assert_eq!(second, "other");
    assert!(scope.end_next().is_none());
}

#[test]
fn q3_aliases_after_a_failed_commit_or_a_panicking_callback_roll_back() {
    // (view succeeded, how each alias ended, which of them committed)
    let cases: &[(bool, &[AliasEnd], &[bool])] = &[
        (
            true,
            &[AliasEnd::Committed, AliasEnd::Committed],
            &[true, true],
        ),
        (
            true,
            &[AliasEnd::CommitFailed, AliasEnd::RolledBack],
            &[true, false],
        ),
        (
            true,
            &[AliasEnd::CallbackPanicked, AliasEnd::RolledBack],
            &[true, false],
        ),
        (
            false,
            &[AliasEnd::RolledBack, AliasEnd::RolledBack],
            &[false, false],
        ),
    ];
    for (view_succeeded, ends, commits) in cases {
        let mut end = RequestEnd::new(*view_succeeded);
        for (alias_end, commits) in ends.iter().zip(*commits) {
            assert_eq!(end.commits(), *commits, "{ends:?}");
            end.ended(*alias_end);
        }
    }
}

// --- Retry -------------------------------------------------------------------------------------

#[test]
fn retry_reasons_as_a_table() {
    let none = AttemptFailure {
        panicked: false,
        body_transient: None,
        body_unique_violation: false,
        commit_transient: None,
        hidden_conflict: false,
    };
    let cases = [
        ("a plain error", none, None),
        (
            "a panic, even a transient-looking one",
            AttemptFailure {
                panicked: true,
                body_transient: Some("40001"),
                ..none
            },
            None,
        ),
        (
            "a serialization failure",
            AttemptFailure {
                body_transient: Some("40001"),
                ..none
            },
            Some("40001"),
        ),
        (
            "a deadlock at COMMIT",
            AttemptFailure {
                commit_transient: Some("1213"),
                ..none
            },
            Some("1213"),
        ),
        (
            "a hidden conflict ending in a unique violation",
            AttemptFailure {
                body_unique_violation: true,
                hidden_conflict: true,
                ..none
            },
            Some("snapshot conflict"),
        ),
        (
            "a hidden conflict swallowed, then another error",
            AttemptFailure {
                hidden_conflict: true,
                ..none
            },
            None,
        ),
    ];
    for (situation, failure, expected) in cases {
        assert_eq!(retry_reason(failure), expected, "{situation}");
    }
}

#[test]
fn c2_a_callback_registered_inside_another_aliass_deeper_block_goes_with_it() {
    // "default" holds connection 0 at depth 1; a block of "other" runs on it at depth 2.
    let mut state = fresh();
    let _outer = ambient_outermost(&mut state);
    let mut other = AliasState::new("other", 1);
    let mut on_defaults_connection = caller(0, 1);
    on_defaults_connection.foreign = Foreign::CallersTransaction;
    let mut host = [state];
    assert!(
        plan_enter(
            &mut other,
            Others::of(&mut host),
            &options(),
            Some(&on_defaults_connection)
        )
        .is_ok()
    );
    let [mut state] = host;
    let mut others = [other];
    assert!(matches!(
        on_commit(&mut state, Others::of(&mut others), callback()),
        OnCommit::Queued
    ));
    assert!(state.callbacks.is_empty());
    assert_eq!(
        others[0].callbacks.len(),
        1,
        "queued on the deeper block of \"other\""
    );
    // When that block runs out of sight, the callback is refused.
    others[0].blocks.last_mut().unwrap().commit_out_of_sight = true;
    assert!(matches!(
        on_commit(&mut state, Others::of(&mut others), callback()),
        OnCommit::Refused(..)
    ));
}

// --- P: replicas -------------------------------------------------------------------------------

fn replica_block() -> BlockOptions<'static> {
    BlockOptions {
        durable: true,
        begin: BeginOptions {
            read_only: true,
            replica: true,
            ..BeginOptions::DEFAULT
        },
        ..options()
    }
}

fn wait(millis: u64) -> ReadYourWrites {
    ReadYourWrites::Wait(Duration::from_millis(millis))
}

fn known(position: &str) -> Position {
    Position::Known(position.into())
}

fn replica(index: usize, wait: Option<WaitFor>) -> ReadRoute {
    ReadRoute::Replica { index, wait }
}

fn waiting_for(position: Position, millis: u64) -> Option<WaitFor> {
    Some(WaitFor {
        position,
        timeout: Duration::from_millis(millis),
    })
}

#[test]
fn p1_reads_inside_a_block_or_a_lent_connection_stay_on_it() {
    type Setup = fn(&mut AliasState);
    let cases: &[(&str, Setup)] = &[
        ("ambient block", |state| drop(ambient_outermost(state))),
        ("explicit block", |state| {
            drop(explicit(state, &options()).unwrap())
        }),
        ("connection() call", |state| {
            state.slot = Slot::Lent(connection(1))
        }),
    ];
    for (situation, setup) in cases {
        let mut state = fresh();
        setup(&mut state);
        for policy in [ReadYourWrites::Off, ReadYourWrites::Primary, wait(10)] {
            assert_eq!(
                route_read(&state, 2, policy, 0, 0),
                ReadRoute::Primary(OnPrimary::InBlock),
                "{situation}, {policy:?}"
            );
        }
    }
}

#[test]
fn p2_reads_outside_blocks_as_a_table() {
    let committed = |position: Option<Position>| {
        let mut state = fresh();
        remember_commit(&mut state, 7, position);
        state
    };
    // (situation, state, replicas, policy, read scope start, turn, expected)
    let cases: Vec<(
        &str,
        AliasState,
        usize,
        ReadYourWrites,
        u64,
        usize,
        ReadRoute,
    )> = vec![
        (
            "no replica",
            fresh(),
            0,
            wait(10),
            0,
            0,
            ReadRoute::Primary(OnPrimary::NoReplica),
        ),
        (
            "nothing committed",
            fresh(),
            2,
            wait(10),
            0,
            3,
            replica(1, None),
        ),
        (
            "Wait after a commit",
            committed(Some(known("0/3000148"))),
            2,
            wait(10),
            0,
            0,
            replica(0, waiting_for(known("0/3000148"), 10)),
        ),
        (
            "Wait after a commit on the caller's connection",
            committed(Some(Position::Unknown)),
            1,
            wait(10),
            0,
            5,
            replica(0, waiting_for(Position::Unknown, 10)),
        ),
        (
            "Wait after a commit that wrote no GTID",
            committed(None),
            1,
            wait(10),
            0,
            0,
            replica(0, None),
        ),
        (
            "Primary after a commit in this scope",
            committed(None),
            2,
            ReadYourWrites::Primary,
            6,
            0,
            ReadRoute::Primary(OnPrimary::CommittedInScope),
        ),
        (
            "Primary after a commit before this scope (an earlier request)",
            committed(None),
            2,
            ReadYourWrites::Primary,
            7,
            1,
            replica(1, None),
        ),
        (
            "Off after a commit",
            committed(Some(known("0-1-42"))),
            2,
            ReadYourWrites::Off,
            0,
            0,
            replica(0, None),
        ),
    ];
    for (situation, state, replicas, policy, scope_start, turn, expected) in cases {
        assert_eq!(
            route_read(&state, replicas, policy, scope_start, turn),
            expected,
            "{situation}"
        );
    }
}

#[test]
fn p2_replicas_are_taken_in_turn() {
    let state = fresh();
    let indexes: Vec<ReadRoute> = (0..4)
        .map(|turn| route_read(&state, 3, ReadYourWrites::Off, 0, turn))
        .collect();
    assert_eq!(
        indexes,
        [
            replica(0, None),
            replica(1, None),
            replica(2, None),
            replica(0, None)
        ]
    );
}

#[test]
fn p2_a_replica_seen_to_have_replayed_the_commit_is_not_waited_for_again() {
    let mut state = fresh();
    remember_commit(&mut state, 1, Some(known("0/10")));
    replayed(&mut state, 1, &known("0/10"));
    assert_eq!(route_read(&state, 2, wait(10), 0, 1), replica(1, None));
    assert_eq!(
        route_read(&state, 2, wait(10), 0, 0),
        replica(0, waiting_for(known("0/10"), 10)),
        "another replica still waits"
    );
    // A later commit is waited for again, everywhere.
    remember_commit(&mut state, 2, Some(known("0/20")));
    assert_eq!(
        route_read(&state, 2, wait(10), 0, 1),
        replica(1, waiting_for(known("0/20"), 10))
    );
    // A replica that replayed an older position does not count for the newer one.
    replayed(&mut state, 1, &known("0/10"));
    assert_eq!(
        route_read(&state, 2, wait(10), 0, 1),
        replica(1, waiting_for(known("0/20"), 10))
    );
}

#[test]
fn p2_a_commit_of_unknown_position_waits_for_the_primarys_position_once_known() {
    let mut state = fresh();
    remember_commit(&mut state, 1, Some(Position::Unknown));
    position_resolved(&mut state, Some("0/30".into()));
    assert_eq!(
        route_read(&state, 2, wait(10), 0, 0),
        replica(0, waiting_for(known("0/30"), 10))
    );
    // Only an unknown position is resolved.
    position_resolved(&mut state, Some("0/99".into()));
    assert_eq!(state.last_commit.position, Some(known("0/30")));
    let mut nothing = fresh();
    remember_commit(&mut nothing, 1, Some(Position::Unknown));
    position_resolved(&mut nothing, None);
    assert_eq!(route_read(&nothing, 1, wait(10), 0, 0), replica(0, None));
}

#[test]
fn p2_what_a_commit_remembers_as_a_table() {
    let cases = [
        (0, wait(10), Remember::Nothing),
        (0, ReadYourWrites::Primary, Remember::Nothing),
        (1, ReadYourWrites::Off, Remember::Nothing),
        (1, ReadYourWrites::Primary, Remember::Commit),
        (2, wait(10), Remember::Position),
    ];
    for (replicas, policy, expected) in cases {
        assert_eq!(
            what_to_remember(replicas, policy),
            expected,
            "{replicas} replicas, {policy:?}"
        );
    }
}

#[test]
fn p2_only_a_commit_that_may_have_written_on_the_primary_is_remembered() {
    let mut state = fresh();
    let outermost = ambient_outermost(&mut state);
    assert!(commit_to_remember(&state, &outermost));
    let inner = explicit(&mut state, &options()).unwrap();
    assert!(
        !commit_to_remember(&state, &inner),
        "a savepoint commits nothing"
    );
    drop(plan_leave(&mut state, &inner, true));
    drop(plan_leave(&mut state, &outermost, true));

    for (situation, begin) in [
        (
            "read-only",
            BeginOptions {
                read_only: true,
                ..BeginOptions::DEFAULT
            },
        ),
        (
            "on a replica",
            BeginOptions {
                replica: true,
                ..BeginOptions::DEFAULT
            },
        ),
    ] {
        let mut state = fresh();
        state.slot = Slot::Held(connection(0));
        state.block_connection = Some(connection(0));
        let read_only = BlockOptions { begin, ..options() };
        let entered = push_checked_out(
            &mut state,
            0,
            Foreign::None,
            &read_only,
            BeginOptionsUse::Apply,
        );
        assert!(!commit_to_remember(&state, &entered), "{situation}");
    }

    let mut state = fresh();
    let inside_callers = match plan_enter(
        &mut state,
        Others::of(&mut []),
        &options(),
        Some(&caller(0, 1)),
    ) {
        Ok(EnterPlan::OnCallersConnection { entered, .. }) => entered,
        other => panic!("{other:?}"),
    };
    assert!(
        !commit_to_remember(&state, &inside_callers),
        "the caller's own transaction commits out of sight"
    );
}

#[test]
fn p2_a_connection_call_outside_blocks_is_a_commit_but_a_read_is_not() {
    // (lent by a block, lent to a read, expected)
    let cases = [
        (false, false, true),
        (true, false, false),
        (false, true, false),
        (true, true, false),
    ];
    for (from_block, for_read, expected) in cases {
        assert_eq!(
            lend_to_remember(from_block, for_read),
            expected,
            "from_block {from_block}, for_read {for_read}"
        );
    }
}

#[test]
fn p1_a_replica_block_must_be_outermost_and_check_its_connection_out() {
    let mut state = fresh();
    assert!(matches!(
        plan_enter(&mut state, Others::of(&mut []), &replica_block(), None),
        Ok(EnterPlan::CheckOut)
    ));

    // Nested in a block of the alias, durable or not.
    let mut state = fresh();
    drop(ambient_outermost(&mut state));
    for options in [
        replica_block(),
        BlockOptions {
            durable: false,
            ..replica_block()
        },
    ] {
        match plan_enter(&mut state, Others::of(&mut []), &options, None) {
            Err(Error::ReplicaNested { alias }) => assert_eq!(alias, "default"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(state.blocks.len(), 1, "no state change");

    // On the caller's connection: not a replica.
    let mut state = fresh();
    match plan_enter(
        &mut state,
        Others::of(&mut []),
        &replica_block(),
        Some(&caller(0, 0)),
    ) {
        Err(error @ Error::ReplicaUnsupported { .. }) => {
            assert!(error.to_string().contains("explicit mode"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert!(state.blocks.is_empty() && state.slot == Slot::Empty);

    // Directly inside a TestTransaction: a savepoint of the test's transaction.
    let mut state = fresh();
    state.slot = Slot::Held(connection(0));
    state.block_connection = Some(connection(0));
    drop(push_test_transaction(&mut state, 0, Foreign::None));
    assert!(matches!(
        plan_enter(&mut state, Others::of(&mut []), &replica_block(), None),
        Ok(EnterPlan::AmbientSavepoint)
    ));
}

/// A runtime whose executor does not route replica blocks (the async one, for now).
struct NoReplicaRouting;

impl Flavor for NoReplicaRouting {
    type Callback = Callback;
    type Pooled = dyn crate::adapter::PooledConn;
}

#[test]
fn p1_an_executor_that_does_not_route_replica_blocks_refuses_them() {
    let mut state = AliasState::<NoReplicaRouting>::new("reports", 0);
    match plan_enter(&mut state, Others::of(&mut []), &replica_block(), None) {
        Err(error @ Error::ReplicaUnsupported { .. }) => {
            let message = error.to_string();
            assert!(message.contains("alias 'reports'"), "{message}");
            assert!(message.contains("async runtime"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        plan_enter(&mut state, Others::of(&mut []), &options(), None),
        Ok(EnterPlan::CheckOut)
    ));
}
