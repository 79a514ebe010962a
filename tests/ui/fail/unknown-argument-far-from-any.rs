use diesel_atomic::atomic;

#[atomic(isolation = "serializable")]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
