//! `#[diesel_atomic::test]` suggests the key nearest to a misspelt one.
#[diesel_atomic::test(transactoin = false)]
fn signup_commits() {}

fn main() {}
