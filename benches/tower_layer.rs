//! Requests per second through `AtomicRequestsLayer` on PostgreSQL, against the same handler
//! with a hand-written per-request diesel-async transaction, and against today's sync path
//! (`axum::atomic_view`: diesel on tokio's blocking pool).
//!
//! Three axum servers on 127.0.0.1 in one process, each handler one INSERT in the request's
//! transaction, answering 201:
//!
//! 1. **layer**: `AtomicRequestsLayer` + `aio::connection` (the request's transaction);
//! 2. **by hand**: `pool.get().await` + `conn.transaction(..)` in the handler, no layer;
//! 3. **atomic_view**: the sync twin, `atomic_view(|| connection(..))` on an r2d2 pool;
//! 4. **layer, unused**: the layer around the by-hand handler, which does its own
//!    transaction and never reaches the request's: what the layer's request scope costs by
//!    itself (no BEGIN of the layer's is sent), so the gap of (1) splits in two.
//!
//! `CLIENTS` concurrent clients (64 by default), each a keep-alive HTTP/1 connection, send
//! requests for one window per server in turn; a round times one window of each, in rotating
//! order, and a ratio is the median of the rounds' ratios (drift on a shared machine moves a
//! round's windows alike). Both async servers share one deadpool pool; the sync one an r2d2
//! pool of the same size.
//!
//! ```sh
//! eval "$(scripts/db-up)"
//! LAYER=1 cargo bench --features tower,axum,async-postgres,postgres --bench tower_layer
//! # ROUNDS=15 WINDOW_MS=1000 CLIENTS=64 POOL=16 by default
//! ```
//!
//! Prints markdown and writes `bench/results/tower_layer.md`.
//!
//! `ONLY=<1-4>` loads one server for 8 windows instead, printing its requests a second, CPU
//! and context switches per window and the requests served: a steady load to profile one
//! server (`perf record`, `perf stat`), with nothing written.

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use diesel::r2d2::ConnectionManager;
use diesel::{ExpressionMethods, PgConnection, QueryResult};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_atomic::axum::atomic_view;
use diesel_atomic::tower::AtomicRequestsLayer;
use diesel_atomic::{Database, Databases, Error, aio};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use common::{env, quantile};

diesel::table! {
    bench_layer_items (id) {
        id -> Integer,
        n -> Integer,
    }
}

const SCHEMA: &str = "DROP TABLE IF EXISTS bench_layer_items; \
     CREATE TABLE bench_layer_items (id SERIAL PRIMARY KEY, n INTEGER NOT NULL)";

// --- The handlers ----------------------------------------------------------------------------

async fn insert(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::insert_into(bench_layer_items::table)
        .values(bench_layer_items::n.eq(1))
        .execute(conn)
        .await
        .map(drop)
}

/// Through the layer: the handler's connection is the request's transaction.
async fn with_layer() -> StatusCode {
    let inserted = aio::connection(async |conn: &mut AsyncPgConnection| {
        insert(conn).await.map_err(Error::from)
    })
    .await;
    match inserted {
        Ok(()) => StatusCode::CREATED,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// By hand: what a handler writes without the layer.
async fn by_hand(State(pool): State<Pool<AsyncPgConnection>>) -> StatusCode {
    let Ok(mut conn) = pool.get().await else {
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    match conn.transaction(async |conn| insert(conn).await).await {
        Ok(()) => StatusCode::CREATED,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The sync path: a diesel view on tokio's blocking pool inside `request()`.
async fn sync_view() -> axum::response::Response {
    atomic_view(|| {
        diesel_atomic::connection(|conn: &mut PgConnection| {
            let insert =
                diesel::insert_into(bench_layer_items::table).values(bench_layer_items::n.eq(1));
            diesel::RunQueryDsl::execute(insert, conn).map_err(Error::from)
        })?;
        Ok::<_, ViewError>(StatusCode::CREATED)
    })
    .await
}

struct ViewError;

impl From<Error> for ViewError {
    fn from(_: Error) -> Self {
        ViewError
    }
}

impl axum::response::IntoResponse for ViewError {
    fn into_response(self) -> axum::response::Response {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

// --- Load --------------------------------------------------------------------------------------

/// Serves `router` on 127.0.0.1; gives its URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/insert", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    url
}

/// `ONLY=<n>`: server `n` (1-based, as in the module doc) alone, 8 windows.
async fn profile_one(urls: &[String], only: usize, clients: usize, window: Duration) {
    let Some(url) = only.checked_sub(1).and_then(|index| urls.get(index)) else {
        eprintln!("ONLY={only}: no such server (1 to {})", urls.len());
        return;
    };
    let mut served = 0.0;
    for _ in 0..8 {
        let load = load(url, clients, window).await;
        eprintln!(
            "server {only}: {:.0} requests/s, CPU {:.1} µs and {:.2} switches per request",
            load.per_second, load.cpu_us, load.switches
        );
        served += load.per_second * window.as_secs_f64();
    }
    eprintln!("server {only}: {served:.0} requests served");
}

/// One window of load on one server.
#[derive(Clone, Copy, Default)]
struct Window {
    per_second: f64,
    /// The process's CPU time (clients and servers, all threads) per request, in µs.
    cpu_us: f64,
    /// The process's context switches per request.
    switches: f64,
}

/// `clients` keep-alive clients sending POSTs to `url` for `window`. Every answer must be
/// 201: a failure is a broken benchmark, not a slow one.
async fn load(url: &str, clients: usize, window: Duration) -> Window {
    let cpu_before = cpu();
    let switches_before = switches();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.to_owned();
            let done = Arc::clone(&done);
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let client: Client<HttpConnector, Full<axum::body::Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                while !AtomicBool::load(&stop, Ordering::Relaxed) {
                    let request = Request::post(&url).body(Full::default()).expect("request");
                    let response = client.request(request).await.expect("response");
                    assert_eq!(response.status(), StatusCode::CREATED, "{url}");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    AtomicBool::store(&stop, true, Ordering::Relaxed);
    let requests = AtomicU64::load(&done, Ordering::Relaxed);
    let elapsed = start.elapsed();
    for task in tasks {
        task.await.expect("client");
    }
    let requests = requests.max(1) as f64;
    Window {
        per_second: requests / elapsed.as_secs_f64(),
        cpu_us: (cpu() - cpu_before) * 1e6 / requests,
        switches: (switches() - switches_before) as f64 / requests,
    }
}

fn switches() -> i64 {
    // SAFETY: getrusage writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_nvcsw + usage.ru_nivcsw
}

fn cpu() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let t = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn main() {
    // `cargo bench` runs every bench target; only `LAYER=1 cargo bench --bench tower_layer`
    // runs this one.
    if std::env::var_os("LAYER").is_none() {
        return;
    }
    let Ok(url) = std::env::var("PG_URL") else {
        eprintln!("tower_layer: PG_URL is not set (eval \"$(scripts/db-up)\" first); skipped");
        return;
    };
    let rounds = env("ROUNDS", 15);
    let window = Duration::from_millis(env("WINDOW_MS", 1000) as u64);
    let clients = env("CLIENTS", 64);
    let pool_size = env("POOL", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let table = rt.block_on(async {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(&url);
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .build()
            .expect("pool");
        pool.get()
            .await
            .expect("PostgreSQL")
            .batch_execute(SCHEMA)
            .await
            .expect("schema");
        let layered = Router::new().route("/insert", post(with_layer)).layer(
            AtomicRequestsLayer::new().databases(Databases::new().add(
                "default",
                Database::new_async(pool.clone()).atomic_requests(true),
            )),
        );
        let by_hand = Router::new()
            .route("/insert", post(by_hand))
            .with_state(pool.clone());
        let sync_pool = diesel::r2d2::Pool::builder()
            .max_size(pool_size as u32)
            .build(ConnectionManager::<PgConnection>::new(&url))
            .expect("r2d2 pool");
        Databases::new()
            .add("default", Database::new(sync_pool).atomic_requests(true))
            .install()
            .expect("install");
        let sync = Router::new().route("/insert", post(sync_view));
        let unused = Router::new()
            .route("/insert", post(crate::by_hand))
            .with_state(pool.clone())
            .layer(AtomicRequestsLayer::new().databases(Databases::new().add(
                "default",
                Database::new_async(pool.clone()).atomic_requests(true),
            )));
        let urls = [
            serve(layered).await,
            serve(by_hand).await,
            serve(sync).await,
            serve(unused).await,
        ];
        if let Some(only) = std::env::var("ONLY")
            .ok()
            .and_then(|only| only.parse().ok())
        {
            profile_one(&urls, only, clients, window).await;
            // Nothing to write: the process ends here.
            std::process::exit(0);
        }
        // Warm up: connections opened, statements prepared, blocking threads started.
        for url in &urls {
            load(url, clients, window / 2).await;
        }
        let mut ratios = (Vec::new(), Vec::new(), Vec::new());
        let mut windows: [Vec<Window>; 4] = Default::default();
        for round in 0..rounds {
            let mut this = [Window::default(); 4];
            for k in 0..4 {
                let which = (round + k) % 4;
                this[which] = load(&urls[which], clients, window).await;
            }
            ratios.0.push(this[0].per_second / this[1].per_second);
            ratios.1.push(this[0].per_second / this[2].per_second);
            ratios.2.push(this[3].per_second / this[1].per_second);
            for (all, value) in windows.iter_mut().zip(this) {
                all.push(value);
            }
            eprintln!(
                "round {round}: layer {:.0}/s, by hand {:.0}/s, atomic_view {:.0}/s, \
                 layer unused {:.0}/s",
                this[0].per_second, this[1].per_second, this[2].per_second, this[3].per_second
            );
        }
        for values in [&mut ratios.0, &mut ratios.1, &mut ratios.2] {
            values.sort_by(f64::total_cmp);
        }
        let median = |windows: &[Window], field: fn(&Window) -> f64| {
            let mut values: Vec<f64> = windows.iter().map(field).collect();
            values.sort_by(f64::total_cmp);
            quantile(&values, 0.5)
        };
        let mut table = String::new();
        let _ = writeln!(
            table,
            "Requests per second on PostgreSQL, {clients} concurrent keep-alive HTTP/1 clients \
             in the same process as the servers (a 2-core machine: clients and servers share \
             it alike), one INSERT per request in the request's transaction, pools of \
             {pool_size}; {rounds} rounds, each a {} ms window per server in rotating order. \
             Ratio: the median of the rounds' ratios, with the middle half. CPU and context \
             switches: the whole process's (clients, servers, tokio's blocking pool) per \
             request, medians of the windows.\n",
            window.as_millis()
        );
        let _ = writeln!(
            table,
            "| server | requests/s | CPU per request (µs) | switches per request |\n\
             | --- | ---: | ---: | ---: |"
        );
        for (name, values) in [
            "`AtomicRequestsLayer` + `aio::connection`",
            "hand-written `pool.get()` + `conn.transaction` per request",
            "`axum::atomic_view` (sync diesel, blocking pool)",
            "the layer around the hand-written handler (its request scope unused)",
        ]
        .iter()
        .zip(&windows)
        {
            let _ = writeln!(
                table,
                "| {name} | {:.0} | {:.1} | {:.2} |",
                median(values, |w| w.per_second),
                median(values, |w| w.cpu_us),
                median(values, |w| w.switches)
            );
        }
        let _ = writeln!(
            table,
            "\n| pair | ratio | middle half | target |\n| --- | ---: | --- | --- |"
        );
        let verdict = |ratio: f64| {
            if ratio >= 0.95 {
                "≥ 0.95×: met"
            } else {
                "≥ 0.95×: **missed**"
            }
        };
        let mut pair = |name: &str, ratios: &[f64], target: &str| {
            let _ = writeln!(
                table,
                "| {name} | {:.3}× | {:.3}–{:.3} | {target} |",
                quantile(ratios, 0.5),
                quantile(ratios, 0.25),
                quantile(ratios, 0.75)
            );
        };
        pair(
            "layer / by hand",
            &ratios.0,
            verdict(quantile(&ratios.0, 0.5)),
        );
        pair("layer / atomic_view", &ratios.1, "reported");
        pair(
            "layer unused / by hand",
            &ratios.2,
            "reported: the request scope alone",
        );
        table
    });
    print!("{table}");
    std::fs::create_dir_all("bench/results").expect("bench/results");
    std::fs::write("bench/results/tower_layer.md", table).expect("write results");
}
