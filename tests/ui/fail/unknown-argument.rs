use diesel_atomic::atomic;

#[atomic(usin = "other")]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
