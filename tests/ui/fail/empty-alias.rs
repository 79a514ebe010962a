use diesel_atomic::atomic;

#[atomic(using = "")]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
