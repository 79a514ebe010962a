use diesel_atomic::non_atomic_requests;

#[non_atomic_requests(savepoint = false)]
fn view() -> String {
    String::new()
}

fn main() {}
