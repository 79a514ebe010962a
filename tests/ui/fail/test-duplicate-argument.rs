#[diesel_atomic::test(transaction = false, transaction = true)]
fn signup_commits() {}

fn main() {}
