use diesel_atomic::atomic;

#[atomic(durable = true, read_only = "yes")]
fn report() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
