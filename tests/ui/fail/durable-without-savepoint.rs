use diesel_atomic::atomic;

#[atomic(durable = true, savepoint = false)]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
