//! [`replication`](super::replication)'s queries on diesel-async's connections, for async
//! aliases (rule P2): where a commit is in the primary's log, and whether a replica has
//! replayed that far. The same SQL, awaited; PostgreSQL's polling sleeps on tokio's timer.
//!
//! Only diesel-async's `AsyncPgConnection` (feature `async-postgres`) and
//! `AsyncMysqlConnection` (feature `async-mysql`) are supported: [`supports`] says so when a
//! replica is configured.

use std::time::Duration;

use super::async_connection::AsyncTx;
use super::replication::{Deadline, Unavailable};

/// Whether replicas of connection type `C` can be read from: `Err` says why not.
pub(crate) fn supports<C: 'static>() -> Result<(), String> {
    let type_name = std::any::type_name::<C>();
    if is::<C, Postgres>() || is::<C, Mysql>() {
        return Ok(());
    }
    if type_name.contains("Sqlite") {
        return Err(
            "SQLite has no replicas (a SQLite database is a file of one server)".to_owned(),
        );
    }
    Err(format!(
        "replicas of an async alias are read through diesel-async's `AsyncPgConnection` or \
         `AsyncMysqlConnection` (with the `async-postgres` or `async-mysql` feature), and \
         `{type_name}` is neither"
    ))
}

#[cfg(feature = "async-postgres")]
type Postgres = diesel_async::AsyncPgConnection;
#[cfg(not(feature = "async-postgres"))]
type Postgres = ();
#[cfg(feature = "async-mysql")]
type Mysql = diesel_async::AsyncMysqlConnection;
#[cfg(not(feature = "async-mysql"))]
type Mysql = ();

fn is<C: 'static, T: 'static>() -> bool {
    std::any::TypeId::of::<C>() == std::any::TypeId::of::<T>()
}

/// The connection as diesel-async's PostgreSQL or MySQL connection.
enum Typed<'a> {
    #[cfg(feature = "async-postgres")]
    Postgres(&'a mut diesel_async::AsyncPgConnection),
    #[cfg(feature = "async-mysql")]
    Mysql(&'a mut diesel_async::AsyncMysqlConnection),
    #[cfg(not(all(feature = "async-postgres", feature = "async-mysql")))]
    #[allow(dead_code)]
    Neither(std::marker::PhantomData<&'a ()>),
}

fn typed(conn: &mut dyn AsyncTx) -> Result<Typed<'_>, Unavailable> {
    let any = conn.as_any();
    // `is` first: a failed `downcast_mut` would keep `any` borrowed for the next one.
    #[cfg(feature = "async-postgres")]
    if any.is::<diesel_async::AsyncPgConnection>() {
        return any
            .downcast_mut::<diesel_async::AsyncPgConnection>()
            .map(Typed::Postgres)
            .ok_or(Unavailable::Unsupported("AsyncPgConnection"));
    }
    #[cfg(feature = "async-mysql")]
    if any.is::<diesel_async::AsyncMysqlConnection>() {
        return any
            .downcast_mut::<diesel_async::AsyncMysqlConnection>()
            .map(Typed::Mysql)
            .ok_or(Unavailable::Unsupported("AsyncMysqlConnection"));
    }
    let _ = any;
    Err(Unavailable::Unsupported(
        "an async connection of another type",
    ))
}

/// Where the commit just made on `conn` is in the primary's log (see
/// `replication::position_after_commit`: PostgreSQL's WAL insert position, MariaDB's
/// `@@last_gtid`).
pub(crate) async fn position_after_commit(
    conn: &mut dyn AsyncTx,
) -> Result<Option<String>, Unavailable> {
    match typed(conn)? {
        #[cfg(feature = "async-postgres")]
        Typed::Postgres(conn) => {
            Ok(postgres::text(conn, super::replication::POSTGRES_POSITION).await?)
        }
        #[cfg(feature = "async-mysql")]
        Typed::Mysql(conn) => {
            Ok(mysql::text(conn, super::replication::MARIADB_POSITION_AFTER_COMMIT).await?)
        }
        #[cfg(not(all(feature = "async-postgres", feature = "async-mysql")))]
        Typed::Neither(_) => unreachable!("no `Neither` is ever made"),
    }
}

/// The primary's current position, at or past every commit made before (see
/// `replication::current_position`).
pub(crate) async fn current_position(
    conn: &mut dyn AsyncTx,
) -> Result<Option<String>, Unavailable> {
    match typed(conn)? {
        #[cfg(feature = "async-postgres")]
        Typed::Postgres(conn) => {
            Ok(postgres::text(conn, super::replication::POSTGRES_POSITION).await?)
        }
        #[cfg(feature = "async-mysql")]
        Typed::Mysql(conn) => {
            Ok(mysql::text(conn, super::replication::MARIADB_CURRENT_POSITION).await?)
        }
        #[cfg(not(all(feature = "async-postgres", feature = "async-mysql")))]
        Typed::Neither(_) => unreachable!("no `Neither` is ever made"),
    }
}

/// Waits until the replica behind `conn` has replayed `position`, at most `timeout`: whether
/// it has (see `replication::wait_for`).
pub(crate) async fn wait_for(
    conn: &mut dyn AsyncTx,
    position: &str,
    timeout: Duration,
) -> Result<bool, Unavailable> {
    let mut deadline = Deadline::new(timeout);
    match typed(conn)? {
        #[cfg(feature = "async-postgres")]
        Typed::Postgres(conn) => loop {
            if postgres::replayed(conn, position).await? {
                return Ok(true);
            }
            match deadline.next_pause() {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Ok(false),
            }
        },
        #[cfg(feature = "async-mysql")]
        Typed::Mysql(conn) => loop {
            let answer = mysql::gtid_wait(conn, position, deadline.left()).await?;
            if let Some(result) = deadline.gtid_answer(answer, position) {
                return result;
            }
        },
        #[cfg(not(all(feature = "async-postgres", feature = "async-mysql")))]
        Typed::Neither(_) => {
            let _ = (position, &mut deadline);
            unreachable!("no value is made")
        }
    }
}

#[cfg(feature = "async-postgres")]
mod postgres {
    use diesel::QueryResult;
    use diesel::sql_types::{Bool, Nullable, Text};
    use diesel_async::{AsyncPgConnection, RunQueryDsl};

    /// A server-side value as text; an empty one is `None`.
    pub(super) async fn text(
        conn: &mut AsyncPgConnection,
        expression: &str,
    ) -> QueryResult<Option<String>> {
        let value: Option<String> = diesel::select(diesel::dsl::sql::<Nullable<Text>>(expression))
            .get_result(conn)
            .await?;
        Ok(value.filter(|value| !value.is_empty()))
    }

    /// Whether the standby has replayed the WAL up to `lsn` (a server out of recovery has
    /// nothing to replay).
    pub(super) async fn replayed(conn: &mut AsyncPgConnection, lsn: &str) -> QueryResult<bool> {
        diesel::select(
            diesel::dsl::sql::<Bool>("COALESCE(pg_last_wal_replay_lsn() >= ")
                .bind::<Text, _>(lsn)
                .sql("::pg_lsn, NOT pg_is_in_recovery())"),
        )
        .get_result(conn)
        .await
    }
}

#[cfg(feature = "async-mysql")]
mod mysql {
    use std::time::Duration;

    use diesel::QueryResult;
    use diesel::sql_types::{BigInt, Double, Nullable, Text};
    use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

    /// A server-side value as text; an empty one is `None`.
    pub(super) async fn text(
        conn: &mut AsyncMysqlConnection,
        expression: &str,
    ) -> QueryResult<Option<String>> {
        let value: Option<String> = diesel::select(diesel::dsl::sql::<Nullable<Text>>(expression))
            .get_result(conn)
            .await?;
        Ok(value.filter(|value| !value.is_empty()))
    }

    /// `MASTER_GTID_WAIT(gtid, seconds)`: 0 when the replica reached `gtid` (`Some(true)`), -1
    /// after the timeout (`Some(false)`), NULL for an invalid position (`None`).
    pub(super) async fn gtid_wait(
        conn: &mut AsyncMysqlConnection,
        gtid: &str,
        timeout: Duration,
    ) -> QueryResult<Option<bool>> {
        let answer: Option<i64> = diesel::select(
            diesel::dsl::sql::<Nullable<BigInt>>("MASTER_GTID_WAIT(")
                .bind::<Text, _>(gtid)
                .sql(", ")
                .bind::<Double, _>(timeout.as_secs_f64())
                .sql(")"),
        )
        .get_result(conn)
        .await?;
        Ok(answer.map(|answer| answer == 0))
    }
}
