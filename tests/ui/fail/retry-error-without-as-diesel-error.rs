use diesel_atomic::atomic;

#[derive(Debug)]
enum TransferError {
    Database(diesel_atomic::Error),
}

impl From<diesel_atomic::Error> for TransferError {
    fn from(error: diesel_atomic::Error) -> Self {
        TransferError::Database(error)
    }
}

// `retry` needs to see the diesel error inside `TransferError` to know whether to rerun.
#[atomic(durable = true, retry = 3)]
fn transfer() -> Result<(), TransferError> {
    Ok(())
}

fn main() {
    let _ = transfer();
}
