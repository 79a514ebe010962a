use diesel_atomic::atomic;

#[atomic(durable = true, isolation = repeatable_read)]
fn transfer() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
