use diesel_atomic::atomic;

#[atomic]
fn signup() -> () {}

fn main() {
    signup();
}
