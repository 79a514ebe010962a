//! Turns the last `cargo bench --bench atomic` run into the ratio table of BENCHMARKS.md and
//! the plot of overhead against nesting depth. Reads criterion's estimates under
//! `target/criterion`; prints markdown and writes `bench/results/atomic.md` and
//! `bench/results/nesting.svg`. `bench/run` runs it after the benchmarks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// Mean time of one benchmark in nanoseconds, if it ran.
fn mean_ns(criterion: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(criterion.join(id).join("new/estimates.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

struct Row {
    what: &'static str,
    ours: &'static str,
    theirs: &'static str,
    target: Option<f64>,
}

const ROWS: &[Row] = &[
    Row {
        what: "one INSERT, explicit mode vs `conn.transaction`",
        ours: "insert/atomic_explicit",
        theirs: "insert/diesel_transaction",
        target: Some(1.02),
    },
    Row {
        what: "one INSERT, ambient mode vs `pool.get()` + `conn.transaction`",
        ours: "insert/atomic_ambient",
        theirs: "insert/diesel_pool_get_transaction",
        target: Some(1.10),
    },
    Row {
        what: "empty block vs `conn.transaction`",
        ours: "empty/atomic_explicit",
        theirs: "empty/diesel_transaction",
        target: None,
    },
    Row {
        what: "empty block vs raw `BEGIN`/`COMMIT`",
        ours: "empty/atomic_explicit",
        theirs: "empty/raw_begin_commit",
        target: None,
    },
    Row {
        what: "request() without atomic_requests vs the bare view",
        ours: "request/request/autocommit",
        theirs: "request/view_without_request/autocommit",
        target: None,
    },
    Row {
        what: "request() with atomic_requests vs the bare view",
        ours: "request/request/atomic_requests",
        theirs: "request/view_without_request/atomic_requests",
        target: None,
    },
    Row {
        what: "PostgreSQL: one INSERT, explicit mode vs `conn.transaction`",
        ours: "postgres/insert_atomic_explicit",
        theirs: "postgres/insert_diesel_transaction",
        target: Some(1.02),
    },
    Row {
        what: "PostgreSQL: empty block vs `conn.transaction`",
        ours: "postgres/empty_atomic_explicit",
        theirs: "postgres/empty_diesel_transaction",
        target: None,
    },
];

const DEPTHS: [u32; 4] = [1, 4, 16, 64];

fn main() {
    // `cargo bench` runs every bench target; only `cargo bench --bench report` reports.
    if std::env::args().any(|arg| arg == "--bench") && std::env::var_os("REPORT").is_none() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let criterion = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("criterion");
    let mut out = String::new();
    let ns = |id: &str| mean_ns(&criterion, id);

    writeln!(
        out,
        "| workload | ours (ns) | hand-written (ns) | ratio | target |"
    )
    .unwrap();
    writeln!(out, "| --- | ---: | ---: | ---: | --- |").unwrap();
    for row in ROWS {
        let (Some(ours), Some(theirs)) = (ns(row.ours), ns(row.theirs)) else {
            continue;
        };
        let ratio = ours / theirs;
        let target = match row.target {
            Some(target) if ratio <= target => format!("≤ {target:.2}: met"),
            Some(target) => format!("≤ {target:.2}: **missed**"),
            None => String::new(),
        };
        writeln!(
            out,
            "| {} | {ours:.0} | {theirs:.0} | {ratio:.3}× | {target} |",
            row.what
        )
        .unwrap();
    }
    let mut points = Vec::new();
    for depth in DEPTHS {
        if let (Some(ours), Some(theirs)) = (
            ns(&format!("nesting/atomic_explicit/{depth}")),
            ns(&format!("nesting/diesel_transaction/{depth}")),
        ) {
            writeln!(
                out,
                "| {depth} nested blocks vs nested `conn.transaction` | {ours:.0} | {theirs:.0} | {:.3}× | |",
                ours / theirs
            )
            .unwrap();
            points.push((depth, ours / theirs));
        }
    }

    writeln!(out).unwrap();
    if let Some(base) = ns("on_commit/register_then_roll_back/0") {
        for count in [1u32, 100, 10_000] {
            if let Some(total) = ns(&format!("on_commit/register_then_roll_back/{count}")) {
                let each = (total - base) / f64::from(count);
                let verdict = if each <= 50.0 { "met" } else { "**missed**" };
                writeln!(
                    out,
                    "- on_commit, {count} callback(s) in a block: {each:.1} ns per callback, \
                     registered and dropped (target ≤ 50 ns: {verdict})"
                )
                .unwrap();
            }
        }
    }
    if let (Some(alone), Some(behind)) = (
        ns("on_commit/savepoint_rollback_dropping_10000_after/0"),
        ns("on_commit/savepoint_rollback_dropping_10000_after/90000"),
    ) {
        writeln!(
            out,
            "- rolling back a savepoint that drops 10,000 callbacks: {:.0} µs with none queued \
             before it, {:.0} µs behind 90,000 of its parent's ({:.2}×: O(dropped))",
            alone / 1e3,
            behind / 1e3,
            behind / alone
        )
        .unwrap();
    }

    print!("{out}");
    let results = root.join("bench/results");
    std::fs::create_dir_all(&results).expect("bench/results");
    std::fs::write(results.join("atomic.md"), &out).expect("write atomic.md");
    if !points.is_empty() {
        plot(&results.join("nesting.svg"), &points).expect("plot");
        println!("\nwrote bench/results/atomic.md and bench/results/nesting.svg");
    }
}

/// Overhead (ratio − 1, in percent) against nesting depth, with the 2% target line.
fn plot(path: &Path, points: &[(u32, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    let overhead: Vec<(f64, f64)> = points
        .iter()
        .map(|&(depth, ratio)| (f64::from(depth).log2(), (ratio - 1.0) * 100.0))
        .collect();
    let top = overhead
        .iter()
        .map(|&(_, percent)| percent)
        .fold(5.0_f64, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "#[atomic] overhead over nested conn.transaction (SQLite, in memory)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.2_f64..6.2_f64, 0.0_f64..top)?;
    chart
        .configure_mesh()
        .x_desc("nesting depth")
        .y_desc("overhead (%)")
        .x_labels(7)
        .x_label_formatter(&|x| format!("{}", 2_f64.powf(x.round()) as u32))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            vec![(-0.2, 2.0), (6.2, 2.0)],
            RED.stroke_width(1),
        ))?
        .label("2% target")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    chart
        .draw_series(LineSeries::new(overhead.clone(), BLUE.stroke_width(2)))?
        .label("#[atomic], explicit mode")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    chart.draw_series(
        overhead
            .iter()
            .map(|&point| Circle::new(point, 3, BLUE.filled())),
    )?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
