#[diesel_atomic::test]
#[test]
fn signup() {}

fn main() {}
