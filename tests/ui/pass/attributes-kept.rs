//! Doc comments, other attributes, inner attributes, visibility and `unsafe` stay.
#![deny(missing_docs)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

/// A documented public function: `missing_docs` is satisfied.
#[atomic]
#[must_use = "the result says whether the block committed"]
#[inline]
pub fn documented(conn: &mut SqliteConnection) -> QueryResult<u8> {
    #![allow(unused_variables)]
    let unused = 1;
    conn.batch_execute("SELECT 1")?;
    Ok(1)
}

/// `cfg` still selects one of two definitions.
#[atomic]
#[cfg(any())]
pub fn chosen(conn: &mut SqliteConnection) -> QueryResult<u8> {
    Ok(0)
}

/// `cfg` still selects one of two definitions.
#[atomic]
#[cfg(not(any()))]
pub fn chosen(conn: &mut SqliteConnection) -> QueryResult<u8> {
    conn.batch_execute("SELECT 1")?;
    Ok(2)
}

pub(crate) mod inner {
    use super::*;

    /// Restricted visibility and `unsafe` are kept.
    #[atomic]
    pub(crate) unsafe fn trusted(conn: &mut SqliteConnection, value: *const u8) -> QueryResult<u8> {
        conn.batch_execute("SELECT 1")?;
        // SAFETY: the caller passes a pointer to a live `u8`.
        Ok(unsafe { *value })
    }
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    assert_eq!(documented(&mut conn).unwrap(), 1);
    assert_eq!(chosen(&mut conn).unwrap(), 2);
    let value = 3u8;
    // SAFETY: `value` lives until the call returns.
    assert_eq!(unsafe { inner::trusted(&mut conn, &value) }.unwrap(), 3);
}
