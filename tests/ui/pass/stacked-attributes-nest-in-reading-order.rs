//! Stacked attributes nest in reading order, as Python's decorators do: the first-written
//! `#[atomic]` is the outer block. Observed through on_commit: the inner block's alias commits
//! (and runs its callbacks) while the outer one's block is still open.

use std::cell::RefCell;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_atomic::{Database, Databases, Error, atomic, db, non_atomic_requests, request};

thread_local! {
    static EVENTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn take_events() -> Vec<String> {
    EVENTS.with(|events| events.take())
}

/// Records, when `alias` commits, whether the other alias's block is still open.
fn record_commit(alias: &'static str, other: &'static str) -> Result<(), Error> {
    db(alias).on_commit(move || {
        let other_open = db(other).in_atomic_block();
        EVENTS.with(|events| {
            events
                .borrow_mut()
                .push(format!("{alias} committed, {other} open: {other_open}"))
        });
    })
}

#[atomic(using = "a")]
#[atomic(using = "b")]
fn a_outside_b() -> Result<(), Error> {
    assert!(db("a").in_atomic_block() && db("b").in_atomic_block());
    record_commit("a", "b")?;
    record_commit("b", "a")
}

#[atomic(using = "b")]
#[diesel_atomic::atomic(using = "a", savepoint = false)]
fn b_outside_a() -> Result<(), Error> {
    record_commit("a", "b")?;
    record_commit("b", "a")
}

/// Three deep, and a `non_atomic_requests` among them.
#[atomic(using = "a")]
#[non_atomic_requests(using = "c")]
#[atomic(using = "b")]
fn three_layers() -> Result<bool, Error> {
    record_commit("a", "b")?;
    record_commit("b", "a")?;
    Ok(db("c").in_atomic_block())
}

#[non_atomic_requests(using = "a")]
#[atomic(using = "b")]
fn exempt_view() -> Result<(bool, bool), Error> {
    Ok((db("a").in_atomic_block(), db("b").in_atomic_block()))
}

fn pool() -> Pool<ConnectionManager<SqliteConnection>> {
    Pool::builder()
        .max_size(1)
        .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
        .unwrap()
}

fn main() {
    let _registry = Databases::new()
        .add("a", Database::new(pool()).atomic_requests(true))
        .add("b", Database::new(pool()).atomic_requests(true))
        .add("c", Database::new(pool()).atomic_requests(true))
        .enter();

    a_outside_b().unwrap();
    assert_eq!(
        take_events(),
        ["b committed, a open: true", "a committed, b open: false"]
    );

    b_outside_a().unwrap();
    assert_eq!(
        take_events(),
        ["a committed, b open: true", "b committed, a open: false"]
    );

    assert!(!three_layers().unwrap(), "outside request() there is no request transaction");
    assert_eq!(
        take_events(),
        ["b committed, a open: true", "a committed, b open: false"]
    );

    // Inside a request, the view is exempt on "a" and runs its own block on "b".
    let (a_in_block, b_in_block) = request(exempt_view).unwrap();
    assert!(!a_in_block, "exempt from the request's transaction on \"a\"");
    assert!(b_in_block);
}
