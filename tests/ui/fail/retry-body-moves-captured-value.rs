use diesel_atomic::{Error, atomic};

fn send(message: String) -> Result<(), Error> {
    drop(message);
    Ok(())
}

// A retried body runs once per attempt, so it cannot give away an argument it owns.
#[atomic(durable = true, retry = 3)]
fn notify(message: String) -> Result<(), Error> {
    send(message)
}

fn main() {
    let _ = notify(String::new());
}
