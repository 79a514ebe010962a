use diesel_atomic::atomic;

#[atomic(usin = "other", savepoint = "no", durable = true, durable = false)]
async fn signup() -> i32 {
    0
}

fn main() {}
