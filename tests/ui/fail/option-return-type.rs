use diesel_atomic::atomic;

#[atomic]
fn find_user() -> Option<i32> {
    None
}

fn main() {
    let _ = find_user();
}
