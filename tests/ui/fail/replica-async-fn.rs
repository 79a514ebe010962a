use diesel_atomic::atomic;

#[atomic(durable = true, read_only = true, replica = true)]
async fn report() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
