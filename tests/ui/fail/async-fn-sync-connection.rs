use diesel::SqliteConnection;
use diesel_atomic::atomic;

#[atomic]
async fn signup(conn: &mut SqliteConnection) -> Result<(), diesel_atomic::Error> {
    let _ = conn;
    Ok(())
}

#[atomic]
fn sync_on_async(
    conn: &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper<SqliteConnection>,
) -> Result<(), diesel_atomic::Error> {
    let _ = conn;
    Ok(())
}

fn main() {}
