use diesel_atomic::atomic;

#[atomic(durable = true, begin = "immedate")]
fn transfer() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
