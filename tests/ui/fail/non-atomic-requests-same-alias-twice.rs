use diesel_atomic::non_atomic_requests;

#[non_atomic_requests(using = "other")]
#[non_atomic_requests(using = "other")]
fn view() -> String {
    String::new()
}

fn main() {}
