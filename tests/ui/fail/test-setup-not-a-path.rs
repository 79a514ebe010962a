fn databases() -> diesel_atomic::Databases {
    diesel_atomic::Databases::new()
}

#[diesel_atomic::test(setup = databases())]
fn signup() {}

fn main() {}
