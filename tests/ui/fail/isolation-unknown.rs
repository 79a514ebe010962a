use diesel_atomic::atomic;

#[atomic(durable = true, isolation = "serialisable")]
fn transfer() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
