use diesel_atomic::atomic;

#[atomic(crate = diesel_atomic)]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
