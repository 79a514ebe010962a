use diesel::SqliteConnection;

#[diesel_atomic::test]
fn signup(conn: &mut SqliteConnection) {
    let _ = conn;
}

fn main() {}
