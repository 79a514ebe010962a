use diesel_atomic::atomic;

trait Accounts {
    #[atomic]
    fn open(&self) -> Result<(), diesel_atomic::Error>;
}

fn main() {}
