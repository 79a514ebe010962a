use diesel_atomic::atomic;

#[atomic(durable = true, read_only = true, replica = true, isolation = "serializable")]
fn report() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
