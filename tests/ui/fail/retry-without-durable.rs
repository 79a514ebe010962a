use diesel_atomic::atomic;

#[atomic(retry = 3)]
fn transfer() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
