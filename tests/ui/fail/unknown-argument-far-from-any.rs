use diesel_atomic::atomic;

#[atomic(timeout = 30)]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
