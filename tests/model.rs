//! A model-based property test (issue 5, item 5): random programs of nested atomic blocks
//! (savepoint on or off, durable, ending in `Ok`, `Err` or a panic, caught by their caller or
//! not), inserts, unique violations, on_commit callbacks (plain or robust, panicking, running
//! programs of their own), the rollback flag and manual savepoints, on two aliases, run against
//! the real database and against a small pure reference model of SEMANTICS.md. Both sides must
//! agree on the rows committed on each alias, on the order the callbacks ran in, and on the
//! outcome of every operation (block results, refused queries, probes of the state), in the
//! order they happened.
//!
//! The model follows the rules only, plus one fact of the backend: PostgreSQL aborts the whole
//! transaction on any error and refuses every statement but ROLLBACK TO until then, where
//! SQLite and MariaDB only undo the failing statement.
//!
//! `MODEL_CASES` sets the number of cases per backend (default 1,000). A failure prints the
//! minimal program proptest shrank it to, as pseudo-code, with both traces side by side;
//! programs found that way are kept as fixed cases in `programs_the_generator_found_agree`.
//!
//! Left out: explicit-mode blocks (`run_on`, whose bodies cannot use the ambient operations
//! here), `TestTransaction`, and failures of the database itself (tests/faults.rs).

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Instant;

use common::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{Error, SavepointId};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError as RunFailure, TestRunner};

// ---------------------------------------------------------------------------------------------
// Programs.
// ---------------------------------------------------------------------------------------------

/// How a block's body ends once its operations ran (unless one of them ended it earlier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ends {
    Ok,
    Err,
    Panic,
}

/// The two aliases of the test's databases; blocks, queries, callbacks and flags of one are
/// independent of the other's (S1, C5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alias {
    Default,
    Other,
}

impl Alias {
    fn name(self) -> &'static str {
        match self {
            Alias::Default => "default",
            Alias::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// `using = "other"`, or nothing for the default alias.
    fn using(self) -> &'static str {
        match self {
            Alias::Default => "",
            Alias::Other => "using = \"other\", ",
        }
    }

    /// `db("other").`, or nothing for the default alias.
    fn prefix(self) -> &'static str {
        match self {
            Alias::Default => "",
            Alias::Other => "db(\"other\").",
        }
    }
}

/// What closes a manual savepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Commit,
    Rollback,
}

#[derive(Clone)]
enum Op {
    /// `insert_thing(n)` on the alias; an error is swallowed or propagated with `?`.
    Insert { alias: Alias, n: i32, swallow: bool },
    /// Inserts the number 0, which every table holds from the start: a unique violation,
    /// which aborts the whole transaction on PostgreSQL.
    Duplicate { alias: Alias, swallow: bool },
    /// `Atomic::new().savepoint(..).durable(..).run(body)`; `catch`: the parent swallows the
    /// block's `Err` and catches its panic, else both go on up.
    Block {
        alias: Alias,
        id: u32,
        savepoint: bool,
        durable: bool,
        body: Vec<Op>,
        ends: Ends,
        catch: bool,
    },
    /// `on_commit` (or `on_commit_robust`) of a callback that records `n`, runs `body` as a
    /// program of its own (every error and panic stops at its top level), then panics if asked.
    OnCommit {
        alias: Alias,
        n: i32,
        robust: bool,
        panics: bool,
        body: Vec<Op>,
    },
    /// `set_rollback(flag)`; an error propagates.
    SetRollback(Alias, bool),
    /// Records `in_atomic_block()` and `get_rollback()`.
    Probe(Alias),
    /// `let id = savepoint()?; body?; savepoint_commit(id)? / savepoint_rollback(id)?`.
    Savepoint {
        alias: Alias,
        id: u32,
        body: Vec<Op>,
        then: Then,
    },
}

/// A program: its operations run one after the other outside any block, and an error or a
/// panic that reaches this level ends only the operation it came from.
#[derive(Clone)]
struct Program(Vec<Op>);

impl Program {
    /// Gives inserts, blocks, callbacks and savepoints distinct numbers in program order.
    fn numbered(mut self) -> Program {
        fn number(ops: &mut [Op], next: &mut [u32; 4]) {
            for op in ops {
                match op {
                    Op::Insert { n, .. } => {
                        next[0] += 1;
                        *n = next[0] as i32;
                    }
                    Op::Block { id, body, .. } => {
                        next[1] += 1;
                        *id = next[1];
                        number(body, next);
                    }
                    Op::OnCommit { n, body, .. } => {
                        next[2] += 1;
                        *n = next[2] as i32;
                        number(body, next);
                    }
                    Op::Savepoint { id, body, .. } => {
                        next[3] += 1;
                        *id = next[3];
                        number(body, next);
                    }
                    Op::Duplicate { .. } | Op::SetRollback(..) | Op::Probe(_) => {}
                }
            }
        }
        number(&mut self.0, &mut [0; 4]);
        self
    }

    fn size(&self) -> usize {
        fn size(ops: &[Op]) -> usize {
            ops.iter()
                .map(|op| match op {
                    Op::Block { body, .. }
                    | Op::OnCommit { body, .. }
                    | Op::Savepoint { body, .. } => 1 + size(body),
                    _ => 1,
                })
                .sum()
        }
        size(&self.0)
    }
}

/// Operations as indented pseudo-code: what a failure prints.
fn render(f: &mut fmt::Formatter<'_>, ops: &[Op], depth: usize) -> fmt::Result {
    for op in ops {
        let indent = "    ".repeat(depth);
        match op {
            Op::Insert { alias, n, swallow } => {
                let what = if *swallow { "; error swallowed" } else { "?" };
                let on = match alias {
                    Alias::Default => "",
                    Alias::Other => " on \"other\"",
                };
                writeln!(f, "{indent}insert {n}{on}{what}")?;
            }
            Op::Duplicate { alias, swallow } => {
                let what = if *swallow { "; error swallowed" } else { "?" };
                let on = match alias {
                    Alias::Default => "",
                    Alias::Other => " on \"other\"",
                };
                writeln!(f, "{indent}insert 0 (duplicate){on}{what}")?;
            }
            Op::Block {
                alias,
                id,
                savepoint,
                durable,
                body,
                ends,
                catch,
            } => {
                let using = alias.using();
                writeln!(
                    f,
                    "{indent}atomic b{id} ({using}savepoint = {savepoint}, durable = {durable}) {{"
                )?;
                render(f, body, depth + 1)?;
                let caught = if *catch {
                    "; caller catches Err and panic"
                } else {
                    "; Err and panic go on up"
                };
                writeln!(f, "{indent}}} ends {ends:?}{caught}")?;
            }
            Op::OnCommit {
                alias,
                n,
                robust,
                panics,
                body,
            } => {
                let prefix = alias.prefix();
                let robust = if *robust { "_robust" } else { "" };
                writeln!(f, "{indent}{prefix}on_commit{robust} cb{n} {{")?;
                render(f, body, depth + 1)?;
                let then = if *panics { " then panics" } else { "" };
                writeln!(f, "{indent}}}{then}")?;
            }
            Op::SetRollback(alias, flag) => {
                writeln!(f, "{indent}{}set_rollback({flag})?", alias.prefix())?;
            }
            Op::Probe(alias) => {
                let prefix = alias.prefix();
                writeln!(
                    f,
                    "{indent}probe {prefix}in_atomic_block(), {prefix}get_rollback()"
                )?;
            }
            Op::Savepoint {
                alias,
                id,
                body,
                then,
            } => {
                let prefix = alias.prefix();
                writeln!(f, "{indent}s{id} = {prefix}savepoint()? {{")?;
                render(f, body, depth + 1)?;
                let then = match then {
                    Then::Commit => "savepoint_commit",
                    Then::Rollback => "savepoint_rollback",
                };
                writeln!(f, "{indent}}} {prefix}{then}(s{id})?")?;
            }
        }
    }
    Ok(())
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render(f, std::slice::from_ref(self), 0)
    }
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "program ({} operations) {{", self.size())?;
        render(f, &self.0, 1)?;
        write!(f, "}}")
    }
}

// ---------------------------------------------------------------------------------------------
// The generator.
// ---------------------------------------------------------------------------------------------

/// Mostly the default alias; "other" often enough to interleave two independent transactions.
fn alias() -> impl Strategy<Value = Alias> {
    prop_oneof![4 => Just(Alias::Default), 1 => Just(Alias::Other)]
}

fn ends() -> impl Strategy<Value = Ends> {
    prop_oneof![5 => Just(Ends::Ok), 3 => Just(Ends::Err), 2 => Just(Ends::Panic)]
}

fn block(body: impl Strategy<Value = Vec<Op>>) -> impl Strategy<Value = Op> {
    (
        alias(),
        prop::bool::weighted(0.6),
        prop::bool::weighted(0.15),
        body,
        ends(),
        prop::bool::weighted(0.7),
    )
        .prop_map(|(alias, savepoint, durable, body, ends, catch)| Op::Block {
            alias,
            id: 0,
            savepoint,
            durable,
            body,
            ends,
            catch,
        })
}

fn callback(body: impl Strategy<Value = Vec<Op>>) -> impl Strategy<Value = Op> {
    (
        alias(),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.15),
        body,
    )
        .prop_map(|(alias, robust, panics, body)| Op::OnCommit {
            alias,
            n: 0,
            robust,
            panics,
            body,
        })
}

/// Any operation, nested up to three bodies deep.
fn op() -> impl Strategy<Value = Op> {
    let leaf = prop_oneof![
        6 => (alias(), prop::bool::weighted(0.3))
            .prop_map(|(alias, swallow)| Op::Insert { alias, n: 0, swallow }),
        1 => (alias(), prop::bool::weighted(0.5))
            .prop_map(|(alias, swallow)| Op::Duplicate { alias, swallow }),
        2 => (alias(), any::<bool>()).prop_map(|(alias, flag)| Op::SetRollback(alias, flag)),
        2 => alias().prop_map(Op::Probe),
        2 => callback(Just(Vec::new())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        let body = prop::collection::vec(inner, 0..4);
        prop_oneof![
            6 => block(body.clone()),
            1 => (alias(), body.clone(), prop::bool::ANY).prop_map(|(alias, body, rollback)| {
                Op::Savepoint {
                    alias,
                    id: 0,
                    body,
                    then: if rollback { Then::Rollback } else { Then::Commit },
                }
            }),
            1 => callback(body),
        ]
    })
}

/// One to three top-level operations, mostly blocks (so that most work happens inside a
/// transaction), bodies at most four deep and at most 16 operations in all.
fn program() -> impl Strategy<Value = Program> {
    let top = prop_oneof![
        3 => block(prop::collection::vec(op(), 1..5)),
        1 => op(),
    ];
    prop::collection::vec(top, 1..4)
        .prop_map(|ops| Program(ops).numbered())
        .prop_filter("at most 16 operations", |program| program.size() <= 16)
}

// ---------------------------------------------------------------------------------------------
// What both sides report.
// ---------------------------------------------------------------------------------------------

/// The errors a program can see; anything else is `Other`, which the model never predicts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// The body's own error (`Ends::Err`).
    Oops,
    /// E1.
    DurableNested,
    /// F3: a query refused while the transaction is marked for rollback.
    Broken,
    /// F1.
    NotInBlock,
    /// The database's unique violation.
    Unique,
    /// PostgreSQL refusing a statement after an error: "current transaction is aborted".
    Aborted,
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Err(Kind),
    /// With the panic's message, which must come through unchanged (X3).
    Panic(String),
}

/// One observable step, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Insert(i32, Result<(), Kind>),
    /// A block returned (or unwound) to its caller.
    Block(u32, Outcome),
    /// The `on_commit` call returned (or unwound).
    Registered(i32, Outcome),
    /// A callback started running.
    Ran(i32),
    SetRollback(bool, Result<(), Kind>),
    Probe {
        in_atomic_block: bool,
        rollback: Result<bool, Kind>,
    },
    SavepointMade(u32, Result<(), Kind>),
    SavepointEnded(u32, Result<(), Kind>),
}

fn block_panic(id: u32) -> String {
    format!("expected panic: block b{id}")
}

fn callback_panic(n: i32) -> String {
    format!("expected panic: callback cb{n}")
}

/// What a program did: the log, and the rows committed at its end on each alias.
#[derive(Debug, PartialEq)]
struct Run {
    events: Vec<Event>,
    rows: [Vec<i32>; 2],
}

impl Run {
    fn callbacks(&self) -> Vec<i32> {
        self.events
            .iter()
            .filter_map(|event| match event {
                Event::Ran(n) => Some(*n),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model: SEMANTICS.md as a pure interpreter, one state per alias.
// ---------------------------------------------------------------------------------------------

type Rows = BTreeSet<i32>;

struct Callback {
    n: i32,
    robust: bool,
    panics: bool,
    body: Vec<Op>,
}

/// An alias's open transaction.
struct Tx {
    /// The rows this transaction sees.
    rows: Rows,
    /// The database's savepoints, oldest first, each with the rows at its creation.
    savepoints: Vec<(u64, Rows)>,
    /// One entry per open nested block: its savepoint, or `None` (E3). The outermost block
    /// pushes nothing (E2).
    blocks: Vec<Option<u64>>,
    needs_rollback: bool,
    /// PostgreSQL only: a statement failed, and the server refuses every other one until a
    /// ROLLBACK TO (of any savepoint, all being older than the error) or the ROLLBACK.
    aborted: bool,
    /// The on_commit queue, each callback tagged with the block savepoints open when it was
    /// registered (C1).
    queue: Vec<(Vec<u64>, Callback)>,
}

impl Tx {
    fn position(&self, savepoint: u64) -> usize {
        self.savepoints
            .iter()
            .position(|(id, _)| *id == savepoint)
            .unwrap_or_else(|| panic!("model: savepoint {savepoint} is not in the transaction"))
    }

    /// ROLLBACK TO: the rows as they were; later savepoints are gone, this one stays; an
    /// aborted transaction works again.
    fn rollback_to(&mut self, savepoint: u64) {
        let at = self.position(savepoint);
        self.rows = self.savepoints[at].1.clone();
        self.savepoints.truncate(at + 1);
        self.aborted = false;
    }

    /// What the database says to a statement other than ROLLBACK TO, after F3.
    fn refuses(&self) -> Option<Kind> {
        if self.needs_rollback {
            Some(Kind::Broken)
        } else if self.aborted {
            Some(Kind::Aborted)
        } else {
            None
        }
    }

    /// RELEASE: this savepoint and later ones are gone, the rows stay.
    fn release(&mut self, savepoint: u64) {
        let at = self.position(savepoint);
        self.savepoints.truncate(at);
    }
}

/// One alias: its database and its open transaction (S1).
struct Database {
    committed: Rows,
    tx: Option<Tx>,
}

impl Default for Database {
    /// Every table holds the number 0 from the start, for `Op::Duplicate`.
    fn default() -> Self {
        Database {
            committed: Rows::from([0]),
            tx: None,
        }
    }
}

/// How an operation left its body early.
enum Flow {
    Err(Kind),
    Panic(String),
}

impl Flow {
    fn outcome(result: Result<(), Flow>) -> Outcome {
        match result {
            Ok(()) => Outcome::Ok,
            Err(Flow::Err(kind)) => Outcome::Err(kind),
            Err(Flow::Panic(message)) => Outcome::Panic(message),
        }
    }

    /// What the caller of an operation with this outcome sees.
    fn of(outcome: Outcome) -> Result<(), Flow> {
        match outcome {
            Outcome::Ok => Ok(()),
            Outcome::Err(kind) => Err(Flow::Err(kind)),
            Outcome::Panic(message) => Err(Flow::Panic(message)),
        }
    }
}

#[derive(Default)]
struct Model {
    /// The backend aborts a transaction on any error (PostgreSQL).
    aborts: bool,
    databases: [Database; 2],
    events: Vec<Event>,
    next_savepoint: u64,
}

impl Model {
    fn run(program: &Program, aborts: bool) -> Run {
        let mut model = Model {
            aborts,
            ..Model::default()
        };
        model.top(&program.0);
        let [default, other] = model.databases.map(|database| {
            assert!(database.tx.is_none(), "model: a block is still open");
            database.committed.into_iter().collect()
        });
        Run {
            events: model.events,
            rows: [default, other],
        }
    }

    fn db(&mut self, alias: Alias) -> &mut Database {
        &mut self.databases[alias.index()]
    }

    fn tx(&mut self, alias: Alias) -> Option<&mut Tx> {
        self.db(alias).tx.as_mut()
    }

    /// A program's top level: every error and panic stops at its operation.
    fn top(&mut self, ops: &[Op]) {
        for op in ops {
            let _ = self.op(op);
        }
    }

    fn body(&mut self, ops: &[Op]) -> Result<(), Flow> {
        ops.iter().try_for_each(|op| self.op(op))
    }

    fn new_savepoint(&mut self, alias: Alias) -> u64 {
        self.next_savepoint += 1;
        let id = self.next_savepoint;
        let tx = self
            .tx(alias)
            .expect("savepoints only inside a transaction");
        tx.savepoints.push((id, tx.rows.clone()));
        id
    }

    fn op(&mut self, op: &Op) -> Result<(), Flow> {
        match op {
            Op::Insert { alias, n, swallow } => {
                let db = self.db(*alias);
                let result = match &mut db.tx {
                    Some(tx) => match tx.refuses() {
                        // F3 (or PostgreSQL's abort).
                        Some(kind) => Err(kind),
                        None => {
                            tx.rows.insert(*n);
                            Ok(())
                        }
                    },
                    // Autocommit.
                    None => {
                        db.committed.insert(*n);
                        Ok(())
                    }
                };
                self.events.push(Event::Insert(*n, result.clone()));
                match result {
                    Err(kind) if !swallow => Err(Flow::Err(kind)),
                    _ => Ok(()),
                }
            }
            Op::Duplicate { alias, swallow } => {
                let aborts = self.aborts;
                let result = match self.tx(*alias) {
                    Some(tx) => match tx.refuses() {
                        Some(kind) => kind,
                        None => {
                            tx.aborted = aborts;
                            Kind::Unique
                        }
                    },
                    None => Kind::Unique,
                };
                self.events.push(Event::Insert(0, Err(result.clone())));
                if *swallow {
                    return Ok(());
                }
                Err(Flow::Err(result))
            }
            Op::Block {
                alias,
                id,
                savepoint,
                durable,
                body,
                ends,
                catch,
            } => {
                let outcome = self.block(*alias, *id, *savepoint, *durable, body, *ends);
                self.events.push(Event::Block(*id, outcome.clone()));
                if *catch {
                    return Ok(());
                }
                Flow::of(outcome)
            }
            Op::OnCommit {
                alias,
                n,
                robust,
                panics,
                body,
            } => {
                let callback = Callback {
                    n: *n,
                    robust: *robust,
                    panics: *panics,
                    body: body.clone(),
                };
                let outcome = match self.tx(*alias) {
                    // C1: queued, tagged with the open blocks' savepoints (C5: of its alias).
                    Some(tx) => {
                        let tags = tx.blocks.iter().flatten().copied().collect();
                        tx.queue.push((tags, callback));
                        Outcome::Ok
                    }
                    // C1: outside a block, at once; C4: a robust callback's panic is caught.
                    None => Flow::outcome(self.callback(&callback)),
                };
                self.events.push(Event::Registered(*n, outcome.clone()));
                Flow::of(outcome)
            }
            Op::SetRollback(alias, flag) => {
                // F1, F2.
                let result = match self.tx(*alias) {
                    Some(tx) => {
                        tx.needs_rollback = *flag;
                        Ok(())
                    }
                    None => Err(Kind::NotInBlock),
                };
                self.events.push(Event::SetRollback(*flag, result.clone()));
                result.map_err(Flow::Err)
            }
            Op::Probe(alias) => {
                let tx = self.tx(*alias);
                let event = Event::Probe {
                    in_atomic_block: tx.is_some(),
                    rollback: tx.map(|tx| tx.needs_rollback).ok_or(Kind::NotInBlock),
                };
                self.events.push(event);
                Ok(())
            }
            Op::Savepoint {
                alias,
                id,
                body,
                then,
            } => {
                // M1: a real savepoint only inside a transaction; creating one is a query (F3).
                let made = match self.tx(*alias) {
                    None => Ok(None),
                    Some(tx) => match tx.refuses() {
                        Some(kind) => Err(kind),
                        None => Ok(Some(self.new_savepoint(*alias))),
                    },
                };
                self.events
                    .push(Event::SavepointMade(*id, made.clone().map(drop)));
                let savepoint = made.map_err(Flow::Err)?;
                self.body(body)?;
                let ended = match (savepoint, self.tx(*alias)) {
                    (None, _) | (Some(_), None) => Ok(()),
                    (Some(_), Some(tx)) if tx.needs_rollback => Err(Kind::Broken),
                    // M1: manual savepoints do not scope callbacks, and leave the flag.
                    (Some(savepoint), Some(tx)) => match then {
                        Then::Commit if tx.aborted => Err(Kind::Aborted),
                        Then::Commit => {
                            tx.release(savepoint);
                            Ok(())
                        }
                        Then::Rollback => {
                            tx.rollback_to(savepoint);
                            Ok(())
                        }
                    },
                };
                self.events.push(Event::SavepointEnded(*id, ended.clone()));
                ended.map_err(Flow::Err)
            }
        }
    }

    /// Runs a callback: records it, runs its program, then panics if asked (C4: a robust
    /// callback's panic is caught).
    fn callback(&mut self, callback: &Callback) -> Result<(), Flow> {
        self.events.push(Event::Ran(callback.n));
        self.top(&callback.body);
        if callback.panics && !callback.robust {
            return Err(Flow::Panic(callback_panic(callback.n)));
        }
        Ok(())
    }

    fn block(
        &mut self,
        alias: Alias,
        id: u32,
        savepoint: bool,
        durable: bool,
        body: &[Op],
        ends: Ends,
    ) -> Outcome {
        let outermost = self.tx(alias).is_none();
        // E1: checked first; no state change.
        if durable && !outermost {
            return Outcome::Err(Kind::DurableNested);
        }
        if outermost {
            // E2.
            let rows = self.db(alias).committed.clone();
            self.db(alias).tx = Some(Tx {
                rows,
                savepoints: Vec::new(),
                blocks: Vec::new(),
                needs_rollback: false,
                aborted: false,
                queue: Vec::new(),
            });
        } else {
            // E3.
            let tx = self.tx(alias).expect("nested");
            let entry = if savepoint && !tx.needs_rollback {
                if tx.aborted {
                    // The SAVEPOINT itself is refused: the block fails before its body.
                    return Outcome::Err(Kind::Aborted);
                }
                Some(self.new_savepoint(alias))
            } else {
                None
            };
            self.tx(alias).expect("nested").blocks.push(entry);
        }

        let result = self.body(body).and_then(|()| match ends {
            Ends::Ok => Ok(()),
            Ends::Err => Err(Flow::Err(Kind::Oops)),
            Ends::Panic => Err(Flow::Panic(block_panic(id))),
        });

        let tx = self.tx(alias).expect("the block's transaction is open");
        let success = result.is_ok() && !tx.needs_rollback;
        // X2: the flag is cleared first.
        tx.needs_rollback = false;
        if outermost {
            let tx = self.db(alias).tx.take().expect("outermost");
            if success {
                // X1: COMMIT, then the callbacks in registration order (C3), after the state
                // was reset; a plain callback's panic drops the rest and propagates (C4).
                // PostgreSQL answers the COMMIT of an aborted transaction with a ROLLBACK and
                // no error: diesel (as psycopg2 under Django) reports success, so the callbacks
                // run though nothing was committed (tests/backends.rs documents it).
                if !tx.aborted {
                    self.db(alias).committed = tx.rows;
                }
                for (_, callback) in tx.queue {
                    if let Err(flow) = self.callback(&callback) {
                        return Flow::outcome(Err(flow));
                    }
                }
            }
            // X2: ROLLBACK drops everything, callbacks included (C2).
        } else {
            match tx.blocks.pop().expect("nested block entry") {
                // X4: the RELEASE of an aborted transaction fails; ROLLBACK TO + RELEASE
                // work, so the block only returns the RELEASE's error.
                Some(savepoint) if success && tx.aborted => {
                    tx.rollback_to(savepoint);
                    tx.release(savepoint);
                    tx.queue.retain(|(tags, _)| !tags.contains(&savepoint));
                    return Outcome::Err(Kind::Aborted);
                }
                // X1: RELEASE.
                Some(savepoint) if success => tx.release(savepoint),
                // X2: ROLLBACK TO + RELEASE, dropping the callbacks tagged with it (C2).
                Some(savepoint) => {
                    tx.rollback_to(savepoint);
                    tx.release(savepoint);
                    tx.queue.retain(|(tags, _)| !tags.contains(&savepoint));
                }
                // X1: merged into the parent.
                None if success => {}
                // X2: the parent is marked for rollback.
                None => tx.needs_rollback = true,
            }
        }
        // X3: the body's result, unchanged; a silent rollback returns Ok.
        Flow::outcome(result)
    }
}

// ---------------------------------------------------------------------------------------------
// The runtime side: the same program through diesel-atomic on the real database.
// ---------------------------------------------------------------------------------------------

/// The error type of every body: the kinds the comparison cares about.
#[derive(Debug)]
struct Failure(Kind);

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::from(&error)
    }
}

impl From<&Error> for Failure {
    fn from(error: &Error) -> Self {
        Failure(match error {
            Error::DurableNested { .. } => Kind::DurableNested,
            Error::NotInAtomicBlock { .. } => Kind::NotInBlock,
            Error::TransactionManagement(message)
                if message.starts_with(
                    "An error occurred in the current transaction. You can't execute queries \
                     until the end of the 'atomic' block.",
                ) =>
            {
                Kind::Broken
            }
            Error::Database(error) => return Failure::from(error),
            other => Kind::Other(format!("{other:?}")),
        })
    }
}

impl From<&DieselError> for Failure {
    fn from(error: &DieselError) -> Self {
        Failure(match error {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => Kind::Unique,
            DieselError::DatabaseError(_, info)
                if info.message().contains("current transaction is aborted") =>
            {
                Kind::Aborted
            }
            other => Kind::Other(format!("database: {other:?}")),
        })
    }
}

fn kind(result: Result<(), Failure>) -> Result<(), Kind> {
    result.map_err(|Failure(kind)| kind)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// The runtime's API for one alias: the `transaction` module's functions for the default
/// alias (API §4), `db("other")` for the other one (§3).
struct Api(Alias);

impl Api {
    fn atomic(&self) -> Atomic {
        match self.0 {
            Alias::Default => Atomic::new(),
            Alias::Other => Atomic::new().using("other"),
        }
    }

    fn on_commit(&self, robust: bool, f: impl FnOnce() + 'static) -> Result<(), Error> {
        match (self.0, robust) {
            (Alias::Default, false) => transaction::on_commit(f),
            (Alias::Default, true) => transaction::on_commit_robust(f),
            (Alias::Other, false) => diesel_atomic::db("other").on_commit(f),
            (Alias::Other, true) => diesel_atomic::db("other").on_commit_robust(f),
        }
    }

    fn set_rollback(&self, flag: bool) -> Result<(), Error> {
        match self.0 {
            Alias::Default => transaction::set_rollback(flag),
            Alias::Other => diesel_atomic::db("other").set_rollback(flag),
        }
    }

    fn get_rollback(&self) -> Result<bool, Error> {
        match self.0 {
            Alias::Default => transaction::get_rollback(),
            Alias::Other => diesel_atomic::db("other").get_rollback(),
        }
    }

    fn in_atomic_block(&self) -> bool {
        match self.0 {
            Alias::Default => transaction::in_atomic_block(),
            Alias::Other => diesel_atomic::db("other").in_atomic_block(),
        }
    }

    fn savepoint(&self) -> Result<SavepointId, Error> {
        match self.0 {
            Alias::Default => transaction::savepoint(),
            Alias::Other => diesel_atomic::db("other").savepoint(),
        }
    }

    fn savepoint_end(&self, then: Then, id: SavepointId) -> Result<(), Error> {
        match (self.0, then) {
            (Alias::Default, Then::Commit) => transaction::savepoint_commit(id),
            (Alias::Default, Then::Rollback) => transaction::savepoint_rollback(id),
            (Alias::Other, Then::Commit) => diesel_atomic::db("other").savepoint_commit(id),
            (Alias::Other, Then::Rollback) => diesel_atomic::db("other").savepoint_rollback(id),
        }
    }
}

/// The runtime interpreter; shared with the callbacks, which run programs of their own.
#[derive(Default)]
struct Runtime {
    events: RefCell<Vec<Event>>,
}

impl Runtime {
    fn push(&self, event: Event) {
        self.events.borrow_mut().push(event);
    }

    fn top(self: &Rc<Self>, ops: &[Op]) {
        for op in ops {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| self.op(op)));
        }
    }

    fn body(self: &Rc<Self>, ops: &[Op]) -> Result<(), Failure> {
        ops.iter().try_for_each(|op| self.op(op))
    }

    fn op(self: &Rc<Self>, op: &Op) -> Result<(), Failure> {
        match op {
            Op::Insert { alias, n, swallow } => {
                let n = *n;
                let result = on_alias(alias.name(), |conn| {
                    conn.insert_thing(n).map_err(|error| Failure::from(&error))
                });
                let result = kind(result);
                self.push(Event::Insert(n, result.clone()));
                match result {
                    Err(kind) if !swallow => Err(Failure(kind)),
                    _ => Ok(()),
                }
            }
            Op::Duplicate { alias, swallow } => {
                let result = on_alias(alias.name(), |conn| {
                    conn.insert_thing(0).map_err(|error| Failure::from(&error))
                });
                let result = kind(result);
                self.push(Event::Insert(0, result.clone()));
                match result {
                    Err(kind) if !swallow => Err(Failure(kind)),
                    _ => Ok(()),
                }
            }
            Op::Block {
                alias,
                id,
                savepoint,
                durable,
                body,
                ends,
                catch,
            } => {
                let id = *id;
                let block = Api(*alias).atomic().savepoint(*savepoint).durable(*durable);
                let result = panic::catch_unwind(AssertUnwindSafe(|| {
                    block.run(|| {
                        self.body(body)?;
                        match ends {
                            Ends::Ok => Ok(()),
                            Ends::Err => Err(Failure(Kind::Oops)),
                            Ends::Panic => panic!("{}", block_panic(id)),
                        }
                    })
                }));
                let outcome = match &result {
                    Ok(Ok(())) => Outcome::Ok,
                    Ok(Err(Failure(kind))) => Outcome::Err(kind.clone()),
                    Err(payload) => Outcome::Panic(panic_message(payload.as_ref())),
                };
                self.push(Event::Block(id, outcome));
                match result {
                    Ok(Ok(())) => Ok(()),
                    _ if *catch => Ok(()),
                    Ok(Err(failure)) => Err(failure),
                    Err(payload) => panic::resume_unwind(payload),
                }
            }
            Op::OnCommit {
                alias,
                n,
                robust,
                panics,
                body,
            } => {
                let n = *n;
                let callback = {
                    let runtime = Rc::clone(self);
                    let body = body.clone();
                    let panics = *panics;
                    move || {
                        runtime.push(Event::Ran(n));
                        runtime.top(&body);
                        if panics {
                            panic!("{}", callback_panic(n));
                        }
                    }
                };
                let result = panic::catch_unwind(AssertUnwindSafe(|| {
                    Api(*alias).on_commit(*robust, callback)
                }));
                let outcome = match &result {
                    Ok(Ok(())) => Outcome::Ok,
                    Ok(Err(error)) => Outcome::Err(Failure::from(error).0),
                    Err(payload) => Outcome::Panic(panic_message(payload.as_ref())),
                };
                self.push(Event::Registered(n, outcome.clone()));
                match (result, outcome) {
                    (Ok(_), Outcome::Err(kind)) => Err(Failure(kind)),
                    (Ok(_), _) => Ok(()),
                    (Err(payload), _) => panic::resume_unwind(payload),
                }
            }
            Op::SetRollback(alias, flag) => {
                let result = kind(Api(*alias).set_rollback(*flag).map_err(Failure::from));
                self.push(Event::SetRollback(*flag, result.clone()));
                result.map_err(Failure)
            }
            Op::Probe(alias) => {
                let api = Api(*alias);
                self.push(Event::Probe {
                    in_atomic_block: api.in_atomic_block(),
                    rollback: api.get_rollback().map_err(|error| Failure::from(error).0),
                });
                Ok(())
            }
            Op::Savepoint {
                alias,
                id,
                body,
                then,
            } => {
                let api = Api(*alias);
                let made = api.savepoint();
                let savepoint = match made {
                    Ok(savepoint) => {
                        self.push(Event::SavepointMade(*id, Ok(())));
                        savepoint
                    }
                    Err(error) => {
                        let Failure(kind) = Failure::from(error);
                        self.push(Event::SavepointMade(*id, Err(kind.clone())));
                        return Err(Failure(kind));
                    }
                };
                self.body(body)?;
                let ended = api
                    .savepoint_end(*then, savepoint)
                    .map_err(|error| Failure::from(error).0);
                self.push(Event::SavepointEnded(*id, ended.clone()));
                ended.map_err(Failure)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------------

fn cases() -> u32 {
    match std::env::var("MODEL_CASES") {
        Ok(cases) => cases
            .parse()
            .unwrap_or_else(|_| panic!("MODEL_CASES must be a number, not {cases:?}")),
        Err(_) => 1_000,
    }
}

/// Where the two traces part, for the failure message.
fn describe_difference(expected: &Run, actual: &Run) -> String {
    let mut out = String::new();
    if expected.rows != actual.rows {
        out += &format!(
            "committed rows: model {:?}, runtime {:?}\n",
            expected.rows, actual.rows
        );
    }
    if expected.callbacks() != actual.callbacks() {
        out += &format!(
            "callbacks ran: model {:?}, runtime {:?}\n",
            expected.callbacks(),
            actual.callbacks()
        );
    }
    let longest = expected.events.len().max(actual.events.len());
    out += "events (model | runtime):\n";
    for i in 0..longest {
        let model = expected.events.get(i);
        let runtime = actual.events.get(i);
        let mark = if model == runtime { "  " } else { "≠ " };
        out += &format!(
            "{mark}{i:>3}: {} | {}\n",
            model.map_or("-".to_owned(), |event| format!("{event:?}")),
            runtime.map_or("-".to_owned(), |event| format!("{event:?}")),
        );
    }
    out
}

/// Situations the generator must keep reaching, counted over a run from the model's trace:
/// a generator change that stops producing one of them fails the test instead of passing
/// vacuously.
fn count_situations(run: &Run, counts: &mut BTreeMap<&'static str, usize>) {
    let mut count = |situation| *counts.entry(situation).or_default() += 1;
    for event in &run.events {
        match event {
            Event::Insert(_, Err(Kind::Broken)) => count("insert refused, transaction marked (F3)"),
            Event::Block(_, Outcome::Err(Kind::DurableNested)) => {
                count("durable block refused inside a block (E1)")
            }
            Event::Block(_, Outcome::Err(Kind::Broken)) => {
                count("block failed with a refused query (F3)")
            }
            Event::Block(_, Outcome::Panic(message)) if message.contains("callback") => {
                count("callback panic out of the outermost block (C4)")
            }
            Event::Block(_, Outcome::Panic(_)) => count("block panicked"),
            Event::Block(_, Outcome::Err(Kind::Oops)) => count("block returned Err"),
            Event::Ran(_) => count("callback ran"),
            Event::Probe {
                rollback: Ok(true), ..
            } => count("probe saw the rollback flag set"),
            Event::SetRollback(false, Ok(())) => count("set_rollback(false) in a block"),
            Event::Insert(0, Err(Kind::Unique)) => count("unique violation"),
            Event::Insert(_, Err(Kind::Aborted)) => {
                count("insert refused, transaction aborted (PostgreSQL)")
            }
            Event::Block(_, Outcome::Err(Kind::Aborted)) => {
                count("block failed, transaction aborted (PostgreSQL)")
            }
            Event::SavepointMade(_, Ok(())) => count("manual savepoint made"),
            Event::SavepointMade(_, Err(Kind::Broken))
            | Event::SavepointEnded(_, Err(Kind::Broken)) => count("manual savepoint refused (F3)"),
            _ => {}
        }
    }
    if run.rows[1].len() > 1 {
        count("rows committed on \"other\"");
    }
}

/// One backend's databases, and a connection of their own to each (outside the pools: they
/// see only what was committed).
struct Harness<C: Backend> {
    db: TestDb<C>,
    raw: RefCell<[C; 2]>,
}

impl<C: Backend> Harness<C> {
    fn new() -> Self {
        quiet_expected_panics("expected panic");
        let db = setup::<C>();
        let mut raw = [db.raw("default"), db.raw("other")];
        for conn in &mut raw {
            // For `Op::Duplicate`.
            conn.insert_thing(0).expect("insert row 0");
        }
        Harness {
            db,
            raw: RefCell::new(raw),
        }
    }

    /// Runs `program` on the model and on the runtime; returns the model's run, or where the
    /// two disagree.
    fn check(&self, program: &Program) -> Result<Run, String> {
        // Row 0 stays (programs never delete): deleting and inserting it again every case
        // would pile dead entries for one key into PostgreSQL's unique index.
        for conn in self.raw.borrow_mut().iter_mut() {
            conn.batch_execute("DELETE FROM things WHERE num <> 0")
                .expect("empty the table");
        }

        let expected = Model::run(program, C::KIND == common::Kind::Postgres);

        let runtime = Rc::new(Runtime::default());
        runtime.top(&program.0);
        for alias in [Alias::Default, Alias::Other] {
            if Api(alias).in_atomic_block() {
                return Err(format!(
                    "a block is still open on {alias:?} after the program"
                ));
            }
        }
        let rows = self.raw.borrow_mut().each_mut().map(|conn| {
            let mut rows = conn.thing_nums().expect("read things");
            rows.sort_unstable();
            rows
        });
        let actual = Run {
            events: runtime.events.take(),
            rows,
        };

        if expected != actual {
            return Err(format!(
                "the runtime disagrees with the model\n{}",
                describe_difference(&expected, &actual)
            ));
        }
        Ok(expected)
    }

    fn finish(self) {
        assert!(!Api(Alias::Default).in_atomic_block());
        assert!(!Api(Alias::Other).in_atomic_block());
        assert_pool_clean(&self.db.default);
        assert_pool_clean(&self.db.other);
    }
}

fn model_and_runtime_agree_on_random_programs<C: Backend>() {
    let harness = Harness::<C>::new();
    let counts = RefCell::new(BTreeMap::new());
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        // Reproducible from the printed program, not from a file left behind.
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();

    let result = runner.run(&program(), |program| {
        let expected = harness.check(&program).map_err(TestCaseError::fail)?;
        count_situations(&expected, &mut counts.borrow_mut());
        Ok(())
    });

    match result {
        Ok(()) => {}
        Err(RunFailure::Fail(reason, program)) => panic!(
            "{:?}: model and runtime disagree; minimal program:\n{program:?}\n{reason}",
            C::KIND
        ),
        Err(RunFailure::Abort(reason)) => panic!("{:?}: proptest aborted: {reason}", C::KIND),
    }
    eprintln!(
        "{:?}: {cases} random programs agree with the model ({:.1?}); situations reached:",
        C::KIND,
        started.elapsed()
    );
    let counts = counts.into_inner();
    for (situation, count) in &counts {
        eprintln!("{count:>8}  {situation}");
    }
    if cases >= 1_000 {
        let postgres = match C::KIND {
            common::Kind::Postgres => POSTGRES_SITUATIONS,
            _ => &[],
        };
        let missing: Vec<_> = SITUATIONS
            .iter()
            .chain(postgres)
            .filter(|situation| !counts.contains_key(*situation))
            .collect();
        assert!(
            missing.is_empty(),
            "the generator never reached {missing:?} in {cases} programs"
        );
    }
    harness.finish();
}

// ---------------------------------------------------------------------------------------------
// Programs the generator found, shrunk, kept as fixed cases.
// ---------------------------------------------------------------------------------------------

fn a_block(savepoint: bool, ends: Ends, catch: bool, body: Vec<Op>) -> Op {
    Op::Block {
        alias: Alias::Default,
        id: 0,
        savepoint,
        durable: false,
        body,
        ends,
        catch,
    }
}

fn an_insert() -> Op {
    Op::Insert {
        alias: Alias::Default,
        n: 0,
        swallow: false,
    }
}

/// The programs, each with the rule it is about.
fn found_programs() -> Vec<(&'static str, Program)> {
    vec![(
        // PostgreSQL: the swallowed unique violation aborts the transaction, so the inner
        // block's RELEASE fails. ROLLBACK TO + RELEASE work, so the block returns the
        // RELEASE's error and its caller goes on (X4; Django's Atomic.__exit__ only sets
        // needs_rollback when the ROLLBACK TO fails too). The runtime marks the outer block
        // for rollback instead: insert 1 is refused (F3) and the outer block rolls back.
        "X4: a failed RELEASE whose ROLLBACK TO works leaves the caller usable",
        Program(vec![a_block(
            false,
            Ends::Ok,
            false,
            vec![
                a_block(
                    true,
                    Ends::Ok,
                    true,
                    vec![Op::Duplicate {
                        alias: Alias::Default,
                        swallow: true,
                    }],
                ),
                an_insert(),
            ],
        )]),
    )]
}

fn programs_the_generator_found_agree<C: Backend>() {
    let harness = Harness::<C>::new();
    for (rule, program) in found_programs() {
        let program = program.numbered();
        if let Err(difference) = harness.check(&program) {
            panic!(
                "{:?}: {rule}: model and runtime disagree on\n{program:?}\n{difference}",
                C::KIND
            );
        }
    }
    harness.finish();
}

/// What every backend must reach.
const SITUATIONS: &[&str] = &[
    "insert refused, transaction marked (F3)",
    "durable block refused inside a block (E1)",
    "block failed with a refused query (F3)",
    "callback panic out of the outermost block (C4)",
    "block panicked",
    "block returned Err",
    "callback ran",
    "probe saw the rollback flag set",
    "set_rollback(false) in a block",
    "manual savepoint made",
    "manual savepoint refused (F3)",
    "rows committed on \"other\"",
    "unique violation",
];

/// What only PostgreSQL, which aborts a transaction on any error, must reach as well.
const POSTGRES_SITUATIONS: &[&str] = &[
    "insert refused, transaction aborted (PostgreSQL)",
    "block failed, transaction aborted (PostgreSQL)",
];

backend_tests!(
    model_and_runtime_agree_on_random_programs,
    programs_the_generator_found_agree,
);
