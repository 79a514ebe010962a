use diesel_atomic::{atomic, non_atomic_requests};

#[atomic]
#[non_atomic_requests]
fn signup_view() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {
    let _ = signup_view();
}
