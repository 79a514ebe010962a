//! `retry` with an application error type: it implements `From<diesel_atomic::Error>` (so the
//! block can report its own errors) and `AsDieselError` (so the retry loop can tell a transient
//! database failure, which it reruns, from the application's own errors, which it returns).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::{AsDieselError, atomic};

#[derive(Debug)]
enum TransferError {
    Database(DieselError),
    Runtime(diesel_atomic::Error),
    InsufficientFunds,
}

impl From<diesel_atomic::Error> for TransferError {
    fn from(error: diesel_atomic::Error) -> Self {
        TransferError::Runtime(error)
    }
}

impl From<DieselError> for TransferError {
    fn from(error: DieselError) -> Self {
        TransferError::Database(error)
    }
}

impl AsDieselError for TransferError {
    fn as_diesel_error(&self) -> Option<&DieselError> {
        match self {
            TransferError::Database(error) => Some(error),
            TransferError::Runtime(error) => error.as_diesel_error(),
            TransferError::InsufficientFunds => None,
        }
    }
}

/// A serialization failure (SQLSTATE 40001), as PostgreSQL reports a lost SERIALIZABLE race.
fn serialization_failure() -> DieselError {
    DieselError::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new("could not serialize access due to concurrent update".to_owned()),
    )
}

#[atomic(durable = true, retry = 5)]
fn transfer(conn: &mut SqliteConnection, amount: i32, runs: &mut u32) -> Result<(), TransferError> {
    *runs += 1;
    conn.batch_execute(&format!("UPDATE account SET balance = balance - {amount}"))?;
    let balance: i32 =
        diesel::dsl::sql::<diesel::sql_types::Integer>("SELECT balance FROM account")
            .get_result(conn)?;
    if balance < 0 {
        return Err(TransferError::InsufficientFunds);
    }
    if *runs < 3 {
        return Err(serialization_failure().into());
    }
    Ok(())
}

fn balance(conn: &mut SqliteConnection) -> i32 {
    diesel::dsl::sql::<diesel::sql_types::Integer>("SELECT balance FROM account")
        .get_result(conn)
        .unwrap()
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.batch_execute(
        "CREATE TABLE account (balance INTEGER NOT NULL); INSERT INTO account VALUES (100)",
    )
    .unwrap();

    let mut runs = 0;
    transfer(&mut conn, 30, &mut runs).unwrap();
    assert_eq!(runs, 3, "two serialization failures, then success");
    assert_eq!(
        balance(&mut conn),
        70,
        "only the successful attempt's update is kept"
    );

    let mut runs = 0;
    let refused = transfer(&mut conn, 500, &mut runs);
    assert!(matches!(refused, Err(TransferError::InsufficientFunds)));
    assert_eq!(runs, 1, "the application's own error is not retried");
    assert_eq!(balance(&mut conn), 70, "and its update was rolled back");
}
