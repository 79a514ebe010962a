use diesel_atomic::atomic;

#[atomic(savepoint = "no")]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
