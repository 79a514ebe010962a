use diesel_atomic::atomic;

#[atomic(durable)]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
