use diesel_atomic::atomic;

#[atomic]
#[atomic(savepoint = false)]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
