//! What a database's error or setting means, as far as the runtime cares: whether a failure
//! is transient (worth rerunning the whole transaction), and which isolation level an open
//! transaction runs at. diesel has no kind for some of these, so the servers' own messages
//! and variables are read here, and only here.

use std::any::Any;

use diesel::Connection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::options::Isolation;

/// A failure worth rerunning the transaction for, named as the database names it.
pub(crate) fn transient_code(error: &DieselError) -> Option<&'static str> {
    let DieselError::DatabaseError(kind, info) = error else {
        return None;
    };
    let message = info.message();
    match kind {
        // diesel maps MySQL's 1213 (deadlock) to SerializationFailure for prepared statements
        // and to Unknown for `batch_execute`; the server's message is the same for both.
        DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::Unknown
            if message.starts_with("Deadlock found") =>
        {
            Some("1213")
        }
        DatabaseErrorKind::SerializationFailure => Some("40001"),
        // diesel reports PostgreSQL's 40P01 and SQLite's SQLITE_BUSY as Unknown; their
        // messages are fixed by the servers (PostgreSQL's with lc_messages in English).
        DatabaseErrorKind::Unknown if message.starts_with("deadlock detected") => Some("40P01"),
        DatabaseErrorKind::Unknown
            if message == "database is locked" || message == "database table is locked" =>
        {
            Some("SQLITE_BUSY")
        }
        _ => None,
    }
}

/// Whether the database refused a row because of a unique constraint: where a race for a row
/// that a snapshot hides ends (`get_or_create` under REPEATABLE READ).
pub(crate) fn is_unique_violation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// The isolation level of the transaction open on `conn`, as the server reports it.
pub(crate) fn server_isolation<C: Connection + 'static>(conn: &mut C) -> Option<Isolation> {
    let conn = conn as &mut dyn Any;
    #[cfg(feature = "postgres")]
    if let Some(pg) = conn.downcast_mut::<diesel::PgConnection>() {
        return postgres_isolation(pg);
    }
    #[cfg(feature = "mysql")]
    if let Some(mysql) = conn.downcast_mut::<diesel::MysqlConnection>() {
        return mysql_isolation(mysql);
    }
    let _ = conn;
    None
}

/// `transaction_isolation` is the open transaction's own level on PostgreSQL.
#[cfg(feature = "postgres")]
fn postgres_isolation(conn: &mut diesel::PgConnection) -> Option<Isolation> {
    use diesel::RunQueryDsl;
    let level: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "current_setting('transaction_isolation')",
    ))
    .get_result(conn)
    .inspect_err(|error| tracing::warn!(%error, "reading transaction_isolation failed"))
    .ok()?;
    parse_isolation(&level)
}

/// MariaDB (10.x and later) has `@@tx_isolation`; MySQL 8 only `@@transaction_isolation`
/// (MariaDB ≥ 11.1 both). A failed SELECT leaves a MySQL transaction usable.
#[cfg(feature = "mysql")]
fn mysql_isolation(conn: &mut diesel::MysqlConnection) -> Option<Isolation> {
    use diesel::RunQueryDsl;
    ["@@tx_isolation", "@@transaction_isolation"]
        .into_iter()
        .find_map(|variable| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(variable))
                .get_result::<String>(conn)
                .ok()
        })
        .and_then(|level| parse_isolation(&level))
}

/// PostgreSQL spells levels `repeatable read`, MariaDB/MySQL `REPEATABLE-READ`.
#[cfg(any(feature = "postgres", feature = "mysql", test))]
fn parse_isolation(level: &str) -> Option<Isolation> {
    match level.to_ascii_uppercase().replace('-', " ").as_str() {
        "READ UNCOMMITTED" => Some(Isolation::ReadUncommitted),
        "READ COMMITTED" => Some(Isolation::ReadCommitted),
        "REPEATABLE READ" => Some(Isolation::RepeatableRead),
        "SERIALIZABLE" => Some(Isolation::Serializable),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_only_transient_failures() {
        let database =
            |kind, message: &str| DieselError::DatabaseError(kind, Box::new(message.to_owned()));
        let cases = [
            (
                database(
                    DatabaseErrorKind::SerializationFailure,
                    "could not serialize access",
                ),
                Some("40001"),
            ),
            (
                database(
                    DatabaseErrorKind::SerializationFailure,
                    "Deadlock found when trying to get lock; try restarting transaction",
                ),
                Some("1213"),
            ),
            (
                database(DatabaseErrorKind::Unknown, "deadlock detected"),
                Some("40P01"),
            ),
            (
                database(DatabaseErrorKind::Unknown, "database is locked"),
                Some("SQLITE_BUSY"),
            ),
            (
                database(DatabaseErrorKind::UniqueViolation, "duplicate key"),
                None,
            ),
            (
                database(
                    DatabaseErrorKind::ClosedConnection,
                    "server closed the connection",
                ),
                None,
            ),
            (DieselError::NotFound, None),
        ];
        for (error, expected) in cases {
            assert_eq!(transient_code(&error), expected, "{error}");
        }
    }
    #[test]
    fn parses_both_spellings_of_isolation_levels() {
        assert_eq!(
            parse_isolation("repeatable read"),
            Some(Isolation::RepeatableRead)
        );
        assert_eq!(
            parse_isolation("REPEATABLE-READ"),
            Some(Isolation::RepeatableRead)
        );
        assert_eq!(
            parse_isolation("read committed"),
            Some(Isolation::ReadCommitted)
        );
        assert_eq!(
            parse_isolation("SERIALIZABLE"),
            Some(Isolation::Serializable)
        );
        assert_eq!(parse_isolation("snapshot"), None);
    }
}
