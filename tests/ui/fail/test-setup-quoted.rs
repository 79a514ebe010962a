#[diesel_atomic::test(setup = "fixtures::databases")]
fn signup() {}

fn main() {}
