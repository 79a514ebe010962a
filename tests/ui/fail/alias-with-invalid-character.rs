use diesel_atomic::atomic;

#[atomic(using = "replica.1")]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
