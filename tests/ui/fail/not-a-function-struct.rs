use diesel_atomic::atomic;

#[atomic]
struct Signup {
    name: String,
}

fn main() {
    let _ = Signup { name: String::new() }.name;
}
