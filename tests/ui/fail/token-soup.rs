use diesel_atomic::atomic;

#[atomic(= = ,, 3)]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
