//! SQLite's transaction statements through diesel's prepared-statement cache.
//!
//! diesel's `AnsiTransactionManager` sends BEGIN, SAVEPOINT, RELEASE and COMMIT with
//! `batch_execute`, which SQLite parses and compiles anew every time: about 1,200 instructions a
//! statement, more than the rest of a block's bookkeeping. Here the same statements are queries
//! with a static id, so diesel prepares each once per connection and caches it. The SQL, the
//! savepoint names and diesel's depth bookkeeping are exactly `AnsiTransactionManager`'s, so a
//! user's `conn.transaction(..)` still nests with our blocks and r2d2's checks stay right.
//!
//! Only success is handled here. When a cached COMMIT or RELEASE fails, diesel's own
//! `commit_transaction` runs: it sends the statement again and, if that fails too, rolls back
//! exactly as it always does; the first error is the one returned. Instrumentation sees these
//! statements as queries rather than as transaction events, which diesel only lets itself
//! construct.

use diesel::RunQueryDsl;
use diesel::backend::Backend;
use diesel::connection::{Connection, TransactionDepthChange, TransactionManager};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::{Error as DieselError, QueryResult};

use super::internals::change_depth;

/// Savepoint depths with a cached statement; deeper ones go through diesel's `batch_execute`.
const CACHED_DEPTHS: u32 = 8;

/// The statements, indexed by [`Statement`]'s parameter.
const STATEMENTS: [&str; 2 + 2 * CACHED_DEPTHS as usize] = [
    "BEGIN",
    "COMMIT",
    "SAVEPOINT diesel_savepoint_1",
    "SAVEPOINT diesel_savepoint_2",
    "SAVEPOINT diesel_savepoint_3",
    "SAVEPOINT diesel_savepoint_4",
    "SAVEPOINT diesel_savepoint_5",
    "SAVEPOINT diesel_savepoint_6",
    "SAVEPOINT diesel_savepoint_7",
    "SAVEPOINT diesel_savepoint_8",
    "RELEASE SAVEPOINT diesel_savepoint_1",
    "RELEASE SAVEPOINT diesel_savepoint_2",
    "RELEASE SAVEPOINT diesel_savepoint_3",
    "RELEASE SAVEPOINT diesel_savepoint_4",
    "RELEASE SAVEPOINT diesel_savepoint_5",
    "RELEASE SAVEPOINT diesel_savepoint_6",
    "RELEASE SAVEPOINT diesel_savepoint_7",
    "RELEASE SAVEPOINT diesel_savepoint_8",
];

/// One of [`STATEMENTS`] as a query: a type per statement gives each its own cache entry.
#[derive(Debug, Clone, Copy)]
struct Statement<const I: usize>;

impl<const I: usize> QueryId for Statement<I> {
    type QueryId = Self;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<DB: Backend, const I: usize> QueryFragment<DB> for Statement<I> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql(STATEMENTS[I]);
        Ok(())
    }
}

impl<C, const I: usize> RunQueryDsl<C> for Statement<I> {}

/// Runs statement `index` through the cache.
fn execute<C: Connection>(conn: &mut C, index: usize) -> QueryResult<()> {
    macro_rules! dispatch {
        ($($i:literal)*) => {
            match index {
                $($i => RunQueryDsl::execute(Statement::<$i>, conn),)*
                _ => unreachable!("statement {index} is not in the table"),
            }
        };
    }
    dispatch!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17).map(drop)
}

/// BEGIN at depth 0, `SAVEPOINT diesel_savepoint_{depth}` below; `None` when not cached.
fn begin_statement(depth: u32) -> Option<usize> {
    match depth {
        0 => Some(0),
        1..=CACHED_DEPTHS => Some(1 + depth as usize),
        _ => None,
    }
}

/// COMMIT at depth 1, `RELEASE SAVEPOINT diesel_savepoint_{depth - 1}` above.
fn commit_statement(depth: u32) -> Option<usize> {
    match depth {
        1 => Some(1),
        2..=9 => Some(1 + CACHED_DEPTHS as usize + (depth - 1) as usize),
        _ => None,
    }
}

/// `AnsiTransactionManager::begin_transaction` with a cached statement, if there is one for
/// `depth` (the connection's depth before the BEGIN or SAVEPOINT).
pub(crate) fn begin<C: Connection>(conn: &mut C, depth: u32) -> Option<QueryResult<()>> {
    let index = begin_statement(depth)?;
    Some(
        execute(conn, index)
            .and_then(|()| change_depth(conn, TransactionDepthChange::IncreaseDepth)),
    )
}

/// `AnsiTransactionManager::commit_transaction` with a cached statement, if there is one for
/// `depth` (the connection's depth before the COMMIT or RELEASE).
pub(crate) fn commit<C: Connection>(conn: &mut C, depth: u32) -> Option<QueryResult<()>> {
    let index = commit_statement(depth)?;
    Some(match execute(conn, index) {
        Ok(()) => match change_depth(conn, TransactionDepthChange::DecreaseDepth) {
            // As diesel: the connection may have noticed the transaction's end itself.
            Err(DieselError::NotInTransaction) if depth == 1 => Ok(()),
            other => other,
        },
        Err(first) => C::TransactionManager::commit_transaction(conn).map_err(|_| first),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_match_diesels_names_for_each_depth() {
        assert_eq!(STATEMENTS[begin_statement(0).unwrap()], "BEGIN");
        assert_eq!(STATEMENTS[commit_statement(1).unwrap()], "COMMIT");
        for depth in 1..=CACHED_DEPTHS {
            // diesel: SAVEPOINT diesel_savepoint_{depth} at `depth`, and at depth + 1 the
            // RELEASE of diesel_savepoint_{depth}.
            let name = crate::adapter::internals::savepoint_name(depth);
            assert_eq!(
                STATEMENTS[begin_statement(depth).unwrap()],
                format!("SAVEPOINT {name}")
            );
            assert_eq!(
                STATEMENTS[commit_statement(depth + 1).unwrap()],
                format!("RELEASE SAVEPOINT {name}")
            );
        }
        assert_eq!(begin_statement(CACHED_DEPTHS + 1), None);
        assert_eq!(commit_statement(CACHED_DEPTHS + 2), None);
        assert_eq!(commit_statement(0), None);
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn nests_as_deep_as_diesel_and_beyond_the_cache() {
        use diesel::connection::SimpleConnection;
        let mut conn = diesel::SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute("CREATE TABLE t (n INTEGER)").unwrap();
        let deepest = CACHED_DEPTHS + 3;
        for depth in 0..deepest {
            match begin(&mut conn, depth) {
                Some(result) => result.unwrap(),
                None => {
                    <diesel::SqliteConnection as Connection>::TransactionManager::begin_transaction(
                        &mut conn,
                    )
                    .unwrap()
                }
            }
            conn.batch_execute(&format!("INSERT INTO t VALUES ({depth})"))
                .unwrap();
        }
        for depth in (1..=deepest).rev() {
            match commit(&mut conn, depth) {
                Some(result) => result.unwrap(),
                None => {
                    <diesel::SqliteConnection as Connection>::TransactionManager::commit_transaction(
                        &mut conn,
                    )
                    .unwrap()
                }
            }
        }
        let count: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT COUNT(*) FROM t)",
        ))
        .get_result(&mut conn)
        .unwrap();
        assert_eq!(count, i64::from(deepest));
    }
}
