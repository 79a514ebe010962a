//! What the runtime asks of a primary and its replicas for rule P2 (read your own writes), in
//! each backend's SQL: where a commit is in the primary's log, and whether a replica has
//! replayed that far.
//!
//! PostgreSQL: a commit's WAL position (`pg_current_wal_insert_lsn()` right after it),
//! compared with the standby's `pg_last_wal_replay_lsn()`. MariaDB: the session's last GTID (`@@last_gtid`),
//! waited for with `MASTER_GTID_WAIT`. Values travel as bound parameters. Only diesel's own
//! `PgConnection` and `MysqlConnection` are supported (the queries are typed):
//! [`supports`] says so when a replica is configured.

use std::time::{Duration, Instant};

use diesel::Connection;

use super::PooledConn;
use super::internals::BackendKind;

/// Whether replicas of connection type `C` can be read from: `Err` says why not.
pub(crate) fn supports<C: Connection + 'static>() -> Result<(), String> {
    let type_name = std::any::type_name::<C>();
    let supported = match BackendKind::of::<C>() {
        BackendKind::Sqlite => {
            return Err(
                "SQLite has no replicas (a SQLite database is a file of one server)".to_owned(),
            );
        }
        BackendKind::Postgres => is::<C, Postgres>(),
        BackendKind::Mysql => is::<C, Mysql>(),
        BackendKind::Other => false,
    };
    if supported {
        Ok(())
    } else {
        Err(format!(
            "replicas are read through diesel's `PgConnection` or `MysqlConnection` (with the \
             `postgres` or `mysql` feature), and `{type_name}` is neither"
        ))
    }
}

/// The concrete connection type of a backend, when its feature is on (`()` otherwise, which
/// no pool holds).
#[cfg(feature = "postgres")]
type Postgres = diesel::PgConnection;
#[cfg(not(feature = "postgres"))]
type Postgres = ();
#[cfg(feature = "mysql")]
type Mysql = diesel::MysqlConnection;
#[cfg(not(feature = "mysql"))]
type Mysql = ();

fn is<C: 'static, T: 'static>() -> bool {
    std::any::TypeId::of::<C>() == std::any::TypeId::of::<T>()
}

/// Why a replication query could not run: the server's error, or a connection type the
/// queries do not know (a replica configured without [`supports`] saying yes).
#[derive(Debug)]
pub(crate) enum Unavailable {
    Query(diesel::result::Error),
    Unsupported(&'static str),
    /// The server answered something the protocol does not allow.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    Refused(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Query(error) => write!(f, "{error}"),
            Unavailable::Unsupported(type_name) => {
                write!(
                    f,
                    "no replication queries for connections of type `{type_name}`"
                )
            }
            Unavailable::Refused(answer) => f.write_str(answer),
        }
    }
}

impl From<diesel::result::Error> for Unavailable {
    fn from(error: diesel::result::Error) -> Self {
        Unavailable::Query(error)
    }
}

/// The connection as diesel's PostgreSQL or MySQL connection.
enum Typed<'a> {
    #[cfg(feature = "postgres")]
    Postgres(&'a mut diesel::PgConnection),
    #[cfg(feature = "mysql")]
    Mysql(&'a mut diesel::MysqlConnection),
    #[cfg(not(all(feature = "postgres", feature = "mysql")))]
    #[allow(dead_code)]
    Neither(std::marker::PhantomData<&'a ()>),
}

fn typed(conn: &mut dyn PooledConn) -> Result<Typed<'_>, Unavailable> {
    let type_name = conn.type_name();
    let any = conn.inner_any();
    let unsupported = Unavailable::Unsupported(type_name);
    // `is` first: a failed `downcast_mut` would keep `any` borrowed for the next one.
    #[cfg(feature = "postgres")]
    if any.is::<diesel::PgConnection>() {
        return any
            .downcast_mut::<diesel::PgConnection>()
            .map(Typed::Postgres)
            .ok_or(unsupported);
    }
    #[cfg(feature = "mysql")]
    if any.is::<diesel::MysqlConnection>() {
        return any
            .downcast_mut::<diesel::MysqlConnection>()
            .map(Typed::Mysql)
            .ok_or(unsupported);
    }
    let _ = any;
    Err(unsupported)
}

/// Where the commit just made on `conn` (a primary connection, in autocommit mode right after
/// its COMMIT) is in the primary's log: PostgreSQL's WAL position (`0/3000148`), MariaDB's
/// GTID of the session's last transaction (`0-1-42`).
///
/// PostgreSQL's is the WAL *insert* position, not `pg_current_wal_lsn()` (the write position):
/// under `synchronous_commit = off` a COMMIT returns before its record is written, so the
/// write position can be short of it, and a standby that replayed that far may still miss the
/// commit. The insert position is past the commit record in every setting. `None` when there is nothing to wait
/// for (a MariaDB transaction that wrote nothing, on a session that never wrote).
pub(crate) fn position_after_commit(
    conn: &mut dyn PooledConn,
) -> Result<Option<String>, Unavailable> {
    match typed(conn)? {
        #[cfg(feature = "postgres")]
        Typed::Postgres(conn) => Ok(postgres::text(conn, POSTGRES_POSITION)?),
        #[cfg(feature = "mysql")]
        Typed::Mysql(conn) => Ok(mysql::text(conn, MARIADB_POSITION_AFTER_COMMIT)?),
        #[cfg(not(all(feature = "postgres", feature = "mysql")))]
        Typed::Neither(_) => unreachable!("no `Neither` is ever made"),
    }
}

/// The primary's current position, read on any of its connections: at or past every commit
/// made before (the position of a commit made on a connection the runtime cannot query, a
/// caller's own). PostgreSQL: `pg_current_wal_insert_lsn()`; MariaDB: `@@gtid_binlog_pos`, the last
/// GTID of each replication domain.
pub(crate) fn current_position(conn: &mut dyn PooledConn) -> Result<Option<String>, Unavailable> {
    match typed(conn)? {
        #[cfg(feature = "postgres")]
        Typed::Postgres(conn) => Ok(postgres::text(conn, POSTGRES_POSITION)?),
        #[cfg(feature = "mysql")]
        Typed::Mysql(conn) => Ok(mysql::text(conn, MARIADB_CURRENT_POSITION)?),
        #[cfg(not(all(feature = "postgres", feature = "mysql")))]
        Typed::Neither(_) => unreachable!("no `Neither` is ever made"),
    }
}

// What both adapters share (each backend's part is used where its features build it).

/// PostgreSQL's position of a commit, and its current one: the WAL insert position (see
/// [`position_after_commit`] for why not the write position).
#[allow(dead_code)]
pub(crate) const POSTGRES_POSITION: &str = "pg_current_wal_insert_lsn()::text";
/// MariaDB's position of the session's last commit.
#[allow(dead_code)]
pub(crate) const MARIADB_POSITION_AFTER_COMMIT: &str = "@@last_gtid";
/// MariaDB's current position: the last GTID of each replication domain.
#[allow(dead_code)]
pub(crate) const MARIADB_CURRENT_POSITION: &str = "@@gtid_binlog_pos";

/// The time a wait for a replica has (`wait_for`, in both adapters), and how it is spent.
#[allow(dead_code)]
pub(crate) struct Deadline {
    started: Instant,
    timeout: Duration,
    pause: Duration,
}

#[allow(dead_code)]
impl Deadline {
    pub(crate) fn new(timeout: Duration) -> Deadline {
        Deadline {
            started: Instant::now(),
            timeout,
            pause: Duration::from_millis(1),
        }
    }

    /// The time left.
    pub(crate) fn left(&self) -> Duration {
        self.timeout.saturating_sub(self.started.elapsed())
    }

    /// How long to sleep before asking PostgreSQL again, `None` once the time is up: short at
    /// first (a replica is usually milliseconds behind), longer while it lags.
    pub(crate) fn next_pause(&mut self) -> Option<Duration> {
        let left = self.left();
        if left.is_zero() {
            return None;
        }
        let pause = self.pause.min(left);
        self.pause = (self.pause * 2).min(Duration::from_millis(20));
        Some(pause)
    }

    /// What an answer of `MASTER_GTID_WAIT` (see `mysql::wait`) means for the wait: its result,
    /// or `None` to wait again (the server answered before the time was up).
    pub(crate) fn gtid_answer(
        &self,
        answer: Option<bool>,
        position: &str,
    ) -> Option<Result<bool, Unavailable>> {
        match answer {
            Some(true) => Some(Ok(true)),
            Some(false) if self.left().is_zero() => Some(Ok(false)),
            Some(false) => None,
            None => Some(Err(Unavailable::Refused(format!(
                "MASTER_GTID_WAIT('{position}', ..) returned NULL"
            )))),
        }
    }
}

/// Waits until the replica behind `conn` has replayed `position`, at most `timeout` (also
/// when the server answers early): whether it has. PostgreSQL is asked again after short
/// sleeps; MariaDB waits in `MASTER_GTID_WAIT`. A PostgreSQL server out of recovery (a
/// "replica" that is a primary, say the primary itself in a development setup) replays
/// nothing and has nothing to wait for.
pub(crate) fn wait_for(
    conn: &mut dyn PooledConn,
    position: &str,
    timeout: Duration,
) -> Result<bool, Unavailable> {
    let mut deadline = Deadline::new(timeout);
    match typed(conn)? {
        #[cfg(feature = "postgres")]
        Typed::Postgres(conn) => loop {
            if postgres::replayed(conn, position)? {
                return Ok(true);
            }
            match deadline.next_pause() {
                Some(pause) => std::thread::sleep(pause),
                None => return Ok(false),
            }
        },
        #[cfg(feature = "mysql")]
        Typed::Mysql(conn) => loop {
            let answer = mysql::wait(conn, position, deadline.left())?;
            if let Some(result) = deadline.gtid_answer(answer, position) {
                return result;
            }
        },
        #[cfg(not(all(feature = "postgres", feature = "mysql")))]
        Typed::Neither(_) => {
            let _ = (position, &mut deadline);
            unreachable!("no value is made")
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use diesel::sql_types::{Bool, Nullable, Text};
    use diesel::{PgConnection, QueryResult, RunQueryDsl};

    /// A server-side value as text; an empty one is `None`.
    pub(super) fn text(conn: &mut PgConnection, expression: &str) -> QueryResult<Option<String>> {
        let value: Option<String> =
            diesel::select(diesel::dsl::sql::<Nullable<Text>>(expression)).get_result(conn)?;
        Ok(value.filter(|value| !value.is_empty()))
    }

    /// Whether the standby has replayed the WAL up to `lsn` (a server out of recovery has
    /// nothing to replay).
    pub(super) fn replayed(conn: &mut PgConnection, lsn: &str) -> QueryResult<bool> {
        diesel::select(
            diesel::dsl::sql::<Bool>("COALESCE(pg_last_wal_replay_lsn() >= ")
                .bind::<Text, _>(lsn)
                .sql("::pg_lsn, NOT pg_is_in_recovery())"),
        )
        .get_result(conn)
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use std::time::Duration;

    use diesel::sql_types::{BigInt, Double, Nullable, Text};
    use diesel::{MysqlConnection, QueryResult, RunQueryDsl};

    /// A server-side value as text; an empty one is `None`.
    pub(super) fn text(
        conn: &mut MysqlConnection,
        expression: &str,
    ) -> QueryResult<Option<String>> {
        let value: Option<String> =
            diesel::select(diesel::dsl::sql::<Nullable<Text>>(expression)).get_result(conn)?;
        Ok(value.filter(|value| !value.is_empty()))
    }

    /// `MASTER_GTID_WAIT(gtid, seconds)`: 0 when the replica reached `gtid` (`Some(true)`), -1
    /// after the timeout (`Some(false)`), NULL for an invalid position (`None`). The timeout
    /// is never negative: a negative one would wait forever.
    pub(super) fn wait(
        conn: &mut MysqlConnection,
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
        .get_result(conn)?;
        Ok(answer.map(|answer| answer == 0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Deadline, Unavailable};

    #[test]
    fn pauses_grow_to_20_ms_and_stop_at_the_deadline() {
        let mut deadline = Deadline::new(Duration::from_secs(60));
        let pauses: Vec<u64> = (0..7)
            .map(|_| deadline.next_pause().unwrap().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 20, 20]);
        assert_eq!(Deadline::new(Duration::ZERO).next_pause(), None);
    }

    #[test]
    fn an_early_gtid_timeout_waits_again_and_null_is_refused() {
        let open = Deadline::new(Duration::from_secs(60));
        assert!(matches!(
            open.gtid_answer(Some(true), "0-1-5"),
            Some(Ok(true))
        ));
        assert!(open.gtid_answer(Some(false), "0-1-5").is_none());
        let over = Deadline::new(Duration::ZERO);
        assert!(matches!(
            over.gtid_answer(Some(false), "0-1-5"),
            Some(Ok(false))
        ));
        assert!(matches!(
            over.gtid_answer(None, "0-1-5"),
            Some(Err(Unavailable::Refused(message))) if message.contains("0-1-5")
        ));
    }
}
