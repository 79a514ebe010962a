use diesel_atomic::{atomic, non_atomic_requests};

#[non_atomic_requests(using = "other")]
#[atomic(using = "other")]
fn signup_view() -> Result<(), diesel_atomic::Error> {
    Ok(())
}

fn main() {
    let _ = signup_view();
}
