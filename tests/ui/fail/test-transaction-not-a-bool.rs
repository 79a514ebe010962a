#[diesel_atomic::test(transaction = "false")]
fn signup_commits() {}

fn main() {}
