#[diesel_atomic::test]
#[diesel_atomic::atomic]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
