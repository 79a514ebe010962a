use diesel_atomic::atomic;

#[atomic]
const fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
