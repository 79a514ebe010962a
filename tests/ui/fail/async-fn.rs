use diesel_atomic::atomic;

#[atomic]
async fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
