use diesel_atomic::atomic;

struct Accounts;

#[atomic]
impl Accounts {
    fn open(&self) -> Result<(), diesel_atomic::Error> {
        Ok(())
    }
}

fn main() {
    let _ = Accounts.open();
}
