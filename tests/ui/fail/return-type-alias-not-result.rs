use diesel_atomic::atomic;

type Count = i32;

#[atomic]
fn count_users() -> Count {
    0
}

fn main() {
    let _ = count_users();
}
