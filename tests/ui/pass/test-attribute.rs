//! `#[diesel_atomic::test]` with each of its arguments, on sync and async functions, returning
//! `()` or a `Result`. (Built without `--test`, rustc drops the tests after the expansion, so
//! this checks what the attribute accepts; tests/test_attr.rs and tests/test_attr_aio.rs run
//! them.)

use diesel_atomic as renamed;
use diesel_atomic::{Databases, Error};

fn test_databases() -> Databases {
    Databases::new()
}

mod fixtures {
    pub fn databases() -> diesel_atomic::Databases {
        diesel_atomic::Databases::new()
    }
}

#[diesel_atomic::test]
fn plain() {}

#[diesel_atomic::test(setup = test_databases)]
fn with_setup() -> Result<(), Error> {
    Ok(())
}

#[diesel_atomic::test(setup = fixtures::databases, transaction = false)]
/// Doc comments and other attributes stay.
#[should_panic(expected = "boom")]
fn commits_for_real() {
    panic!("boom");
}

#[diesel_atomic::test(transaction = true,)]
#[ignore = "slow"]
async fn async_test() -> Result<(), Error> {
    tokio::task::yield_now().await;
    Ok(())
}

#[renamed::test(crate = "renamed")]
fn renamed_dependency() {}

fn main() {}
