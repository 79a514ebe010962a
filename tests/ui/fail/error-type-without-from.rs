use diesel_atomic::atomic;

#[derive(Debug)]
struct SignupError;

#[atomic]
fn signup() -> Result<(), SignupError> {
    Ok(())
}

fn main() {
    let _ = signup();
}
