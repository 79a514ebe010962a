use diesel_atomic::atomic;

#[atomic(durable = true, replica = true)]
fn report() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
