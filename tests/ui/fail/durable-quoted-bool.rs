use diesel_atomic::atomic;

#[atomic(durable = "true")]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
