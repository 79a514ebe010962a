//! The registry guard and the test transaction belong to the thread that made them.

use diesel_atomic::DatabasesGuard;
use diesel_atomic::testing::TestTransaction;

fn assert_send<T: Send>() {}

fn main() {
    assert_send::<DatabasesGuard>();
    assert_send::<TestTransaction>();
}
