use diesel_atomic::atomic;

#[atomic]
fn count_users() -> i32 {
    0
}

fn main() {
    let _: i32 = count_users();
}
