//! `Result` shapes the attribute accepts: aliases, paths, custom error types.

use std::fmt::Display;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

#[derive(Debug)]
enum AppError {
    Atomic(diesel_atomic::Error),
    Database(diesel::result::Error),
}

impl From<diesel_atomic::Error> for AppError {
    fn from(error: diesel_atomic::Error) -> Self {
        AppError::Atomic(error)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(error: diesel::result::Error) -> Self {
        AppError::Database(error)
    }
}

type AppResult<T> = Result<T, AppError>;

#[atomic]
fn query_result(conn: &mut SqliteConnection) -> QueryResult<i32> {
    conn.batch_execute("SELECT 1")?;
    Ok(1)
}

#[atomic]
fn custom_error(conn: &mut SqliteConnection) -> Result<i32, AppError> {
    conn.batch_execute("SELECT 1")?;
    Ok(2)
}

#[atomic]
fn alias(conn: &mut SqliteConnection) -> AppResult<i32> {
    conn.batch_execute("SELECT 1")?;
    Ok(3)
}

#[atomic]
fn full_path(conn: &mut SqliteConnection) -> std::result::Result<i32, diesel_atomic::Error> {
    conn.batch_execute("SELECT 1")
        .map_err(diesel_atomic::Error::from)?;
    Ok(4)
}

#[atomic]
fn opaque_value(conn: &mut SqliteConnection) -> QueryResult<impl Display> {
    conn.batch_execute("SELECT 1")?;
    Ok(5)
}

/// A generic error type, bounded where the function declares it.
#[atomic]
fn generic_error<E>(conn: &mut SqliteConnection) -> Result<i32, E>
where
    E: From<diesel_atomic::Error> + From<diesel::result::Error>,
{
    conn.batch_execute("SELECT 1")?;
    Ok(6)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    assert_eq!(query_result(&mut conn).unwrap(), 1);
    assert_eq!(custom_error(&mut conn).unwrap(), 2);
    assert_eq!(alias(&mut conn).unwrap(), 3);
    assert_eq!(full_path(&mut conn).unwrap(), 4);
    assert_eq!(opaque_value(&mut conn).unwrap().to_string(), "5");
    assert_eq!(generic_error::<AppError>(&mut conn).unwrap(), 6);
    assert!(matches!(
        AppError::from(diesel::result::Error::NotFound),
        AppError::Database(_)
    ));
}
