use diesel_atomic::atomic;

#[atomic]
const LIMIT: u32 = 10;

fn main() {
    let _ = LIMIT;
}
