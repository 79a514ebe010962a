use diesel_atomic::atomic;

#[atomic(durable = true, retry = 0)]
fn transfer() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
