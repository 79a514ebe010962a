//! `crate = "path"` replaces `::diesel_atomic` in the expansion.
//!
//! The `shim` module proves the override is used, not just accepted: it re-exports the real
//! runtime hooks but records every call that goes through it. `renamed` shows the everyday
//! case, a dependency known under another name.

use std::cell::Cell;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic as renamed;

thread_local! {
    static CALLS_THROUGH_SHIM: Cell<u32> = const { Cell::new(0) };
}

mod shim {
    pub mod __private {
        pub use diesel_atomic::__private::*;

        pub fn run_explicit<C, T, E>(
            options: &Options<'_>,
            conn: &mut C,
            body: impl FnOnce(&mut C) -> Result<T, E>,
        ) -> Result<T, E>
        where
            C: diesel::Connection,
            E: From<diesel_atomic::Error>,
        {
            crate::CALLS_THROUGH_SHIM.with(|calls| calls.set(calls.get() + 1));
            diesel_atomic::__private::run_explicit(options, conn, body)
        }

        pub fn non_atomic_requests<R>(alias: &'static str, body: impl FnOnce() -> R) -> R {
            crate::CALLS_THROUGH_SHIM.with(|calls| calls.set(calls.get() + 1));
            diesel_atomic::__private::non_atomic_requests(alias, body)
        }
    }
}

#[renamed::atomic(crate = "crate::shim")]
fn through_shim(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute("SELECT 1")
}

#[renamed::non_atomic_requests(crate = "crate::shim")]
fn view_through_shim() -> u8 {
    7
}

#[renamed::atomic(crate = "renamed", using = "other")]
fn through_renamed(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute("SELECT 1")
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    through_shim(&mut conn).unwrap();
    assert_eq!(view_through_shim(), 7);
    assert_eq!(CALLS_THROUGH_SHIM.with(Cell::get), 2);
    through_renamed(&mut conn).unwrap();
    assert_eq!(CALLS_THROUGH_SHIM.with(Cell::get), 2);
}
