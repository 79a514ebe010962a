#[diesel_atomic::test]
struct SignupTest;

fn main() {}
