use diesel_atomic::non_atomic_requests;

#[non_atomic_requests(isolation = "serializable")]
fn view() -> String {
    String::new()
}

fn main() {}
