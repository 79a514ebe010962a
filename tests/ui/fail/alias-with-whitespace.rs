use diesel_atomic::atomic;

#[atomic(using = "other ")]
fn signup() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {}
