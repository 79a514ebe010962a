#[diesel_atomic::test(using = "other")]
fn signup() {}

fn main() {}
