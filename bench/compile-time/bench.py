#!/usr/bin/env python3
"""Compile-time cost of `#[atomic]` (issue 8, part 3).

Generates a throwaway Cargo workspace under `target/compile-time/` with three crates holding the
same 500 functions (same bodies, same diesel queries):

* `with_atomic`   - `#[atomic]` on every function (half explicit mode, half ambient mode);
* `hand_written`  - the same bodies wrapped by hand in `conn.transaction(|conn| ...)`, and for
                    the ambient half `pool.get()?` + `conn.transaction(...)`;
* `hand_written_unwind` - `hand_written` with `#[atomic]`'s panic rule too: a panic in the
                    body rolls the transaction back (`catch_unwind` around the body, the panic
                    resumed after the rollback); diesel's `transaction` alone leaves it open;
* `hand_expanded` - what `#[atomic]` expands to, written out (no proc macro runs): splits the
                    macro's cost into "running the macro" (with_atomic - hand_expanded) and
                    "compiling the code it generates" (hand_expanded - hand_written).

Dependencies are built once (warm-up); then each measurement is `cargo clean -p <crate>`
followed by a timed `cargo build -p <crate>`: a clean build of that crate alone. Crates are
alternated (and the order reversed every round) so the load of a shared machine spreads evenly.

Environment: N (rounds, default 5), FUNCTIONS (default 500), MODES (comma list from
check,debug,debug-syn-opt3,release; default all), CRATES (default all three), OUT (results
file, default bench/compile-time/results.md), OFFLINE=0 to let cargo use the network.
"""

import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = REPO / "target" / "compile-time"
TARGET = WORK / "target"

N = int(os.environ.get("N", "5"))
FUNCTIONS = int(os.environ.get("FUNCTIONS", "500"))
ALL_MODES = ["check", "debug", "debug-syn-opt3", "release"]
MODES = [m for m in os.environ.get("MODES", ",".join(ALL_MODES)).split(",") if m]
ALL_CRATES = ["with_atomic", "hand_written", "hand_written_unwind", "hand_expanded"]
CRATES = [c for c in os.environ.get("CRATES", ",".join(ALL_CRATES)).split(",") if c]
OUT = Path(os.environ.get("OUT", HERE / "results.md"))
OFFLINE = os.environ.get("OFFLINE", "1") != "0"

if N < 1 or not MODES or not CRATES:
    sys.exit("N must be at least 1, MODES and CRATES not empty")
for m in MODES:
    if m not in ALL_MODES:
        sys.exit(f"unknown mode {m!r}; known: {', '.join(ALL_MODES)}")
for c in CRATES:
    if c not in ALL_CRATES:
        sys.exit(f"unknown crate {c!r}; known: {', '.join(ALL_CRATES)}")

# The repository's own workspace optimises syn and proc-macro2 in dev builds; a user's crate does
# not inherit that (profiles come from the root manifest of the workspace being built), so the
# default measurement uses cargo's defaults and `debug-syn-opt3` shows what the setting buys.
SYN_OPT3 = [
    "--config", "profile.dev.package.syn.opt-level=3",
    "--config", "profile.dev.package.proc-macro2.opt-level=3",
]

# cargo invocation per mode: (subcommand, extra args, clean args)
MODE_ARGS = {
    "check": (["check"], []),
    "debug": (["build"], []),
    "debug-syn-opt3": (["build"] + SYN_OPT3, []),
    "release": (["build", "--release"], ["--release"]),
}

# ---------------------------------------------------------------------------------------------
# Generation

TABLE = """diesel::table! {
    t (id) {
        id -> Integer,
        n -> Integer,
    }
}
"""

# The bodies, rotated over the functions; each is a `QueryResult<usize>` on `conn`.
BODIES = [
    "diesel::insert_into(t::table).values(t::n.eq(n)).execute(conn)",
    "diesel::update(t::table.filter(t::id.eq(n))).set(t::n.eq(t::n + 1)).execute(conn)",
    "diesel::delete(t::table.filter(t::n.lt(n))).execute(conn)",
    "t::table.filter(t::n.gt(n)).count().get_result::<i64>(conn).map(|c| c as usize)",
]


def kind(i):
    """Half explicit mode; the ambient half split between the default alias and "other"."""
    if i % 2 == 0:
        return "explicit"
    return "ambient-default" if i % 4 == 1 else "ambient-other"


def fn_with_atomic(i):
    body = BODIES[i % len(BODIES)]
    k = kind(i)
    if k == "explicit":
        return f"""#[atomic]
pub fn f_{i}(conn: &mut SqliteConnection, n: i32) -> QueryResult<usize> {{
    {body}
}}
"""
    if k == "ambient-default":
        return f"""#[atomic]
pub fn f_{i}(n: i32) -> Result<usize, Error> {{
    diesel_atomic::connection(|conn: &mut SqliteConnection| Ok({body}?))
}}
"""
    return f"""#[atomic(using = "other")]
pub fn f_{i}(n: i32) -> Result<usize, Error> {{
    diesel_atomic::db("other").connection(|conn: &mut SqliteConnection| Ok({body}?))
}}
"""


def fn_hand_written(i):
    body = BODIES[i % len(BODIES)]
    k = kind(i)
    if k == "explicit":
        return f"""pub fn f_{i}(conn: &mut SqliteConnection, n: i32) -> QueryResult<usize> {{
    conn.transaction(|conn| {body})
}}
"""
    pool = "pool" if k == "ambient-default" else "other_pool"
    return f"""pub fn f_{i}({pool}: &DbPool, n: i32) -> Result<usize, Error> {{
    let mut conn = {pool}.get()?;
    conn.transaction(|conn| Ok({body}?))
}}
"""


def fn_hand_written_unwind(i):
    """`hand_written` plus what `#[atomic]` also does: roll back when the body panics (diesel's
    `transaction` leaves the transaction open on a panic), then resume the panic."""
    body = BODIES[i % len(BODIES)]
    k = kind(i)
    if k == "explicit":
        head = f"pub fn f_{i}(conn: &mut SqliteConnection, n: i32) -> QueryResult<usize> {{\n"
        checkout, run, abort = "", body, "Err(diesel::result::Error::RollbackTransaction)"
    else:
        pool = "pool" if k == "ambient-default" else "other_pool"
        head = f"pub fn f_{i}({pool}: &DbPool, n: i32) -> Result<usize, Error> {{\n"
        checkout = f"    let mut conn = {pool}.get()?;\n"
        run, abort = f"Ok({body}?)", "Err(diesel::result::Error::RollbackTransaction.into())"
    return head + checkout + f"""    let mut panic = None;
    let result = conn.transaction(|conn| {{
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {run})) {{
            Ok(result) => result,
            Err(payload) => {{
                panic = Some(payload);
                {abort}
            }}
        }}
    }});
    if let Some(payload) = panic {{
        std::panic::resume_unwind(payload);
    }}
    result
}}
"""


# What `#[atomic]` generates (atomic-macros/src/expand.rs), written out by hand.
FAKE_RETURN = """#[allow(
            unknown_lints,
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::let_with_type_underscore,
            clippy::needless_return,
            clippy::unreachable
        )]
        if false {{
            let __atomic_fake_return: {ty} = loop {{}};
            return __atomic_fake_return;
        }}"""


def fn_hand_expanded(i):
    body = BODIES[i % len(BODIES)]
    k = kind(i)
    if k == "explicit":
        ty = "QueryResult<usize>"
        return f"""pub fn f_{i}(conn: &mut SqliteConnection, n: i32) -> {ty} {{
    ::diesel_atomic::__private::run_explicit(
        &::diesel_atomic::__private::Options {{ using: "default", savepoint: true, durable: false, begin: ::diesel_atomic::__private::BeginOptions::DEFAULT }},
        conn,
        move |conn| {{
        {FAKE_RETURN.format(ty=ty)}
        {body}
    }})
}}
"""
    ty = "Result<usize, Error>"
    alias = "default" if k == "ambient-default" else "other"
    call = ("diesel_atomic::connection" if k == "ambient-default"
            else 'diesel_atomic::db("other").connection')
    return f"""pub fn f_{i}(n: i32) -> {ty} {{
    ::diesel_atomic::__private::run_ambient(
        &::diesel_atomic::__private::Options {{ using: "{alias}", savepoint: true, durable: false, begin: ::diesel_atomic::__private::BeginOptions::DEFAULT }},
        move || {{
        {FAKE_RETURN.format(ty=ty)}
        {call}(|conn: &mut SqliteConnection| Ok({body}?))
    }})
}}
"""


HEADERS = {
    "with_atomic": """//! Generated by bench/compile-time: {n} `#[atomic]` functions.
#![allow(dead_code)]

use diesel::prelude::*;
use diesel_atomic::{{atomic, Error}};

""",
    "hand_written": """//! Generated by bench/compile-time: {n} hand-written `conn.transaction` wrappers.
#![allow(dead_code)]

use diesel::prelude::*;
use diesel::r2d2::{{ConnectionManager, Pool, PoolError}};

pub type DbPool = Pool<ConnectionManager<SqliteConnection>>;

/// What a hand-written ambient function can fail with: the pool or the database.
#[derive(Debug)]
pub enum Error {{
    Pool(PoolError),
    Database(diesel::result::Error),
}}

impl From<PoolError> for Error {{
    fn from(error: PoolError) -> Self {{
        Error::Pool(error)
    }}
}}

impl From<diesel::result::Error> for Error {{
    fn from(error: diesel::result::Error) -> Self {{
        Error::Database(error)
    }}
}}

""",
    "hand_written_unwind": None,
    "hand_expanded": """//! Generated by bench/compile-time: the expansion of {n} `#[atomic]` functions, written out.
#![allow(dead_code)]

use diesel::prelude::*;
use diesel_atomic::Error;

""",
}

GENERATORS = {
    "with_atomic": fn_with_atomic,
    "hand_written": fn_hand_written,
    "hand_written_unwind": fn_hand_written_unwind,
    "hand_expanded": fn_hand_expanded,
}


def write_if_changed(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def generate():
    # Paths in the generated manifests are relative, so nothing machine-specific is written.
    members = ", ".join(f'"{c}"' for c in ALL_CRATES)
    write_if_changed(WORK / "Cargo.toml", f"""# Generated by bench/compile-time/bench.py: throwaway, not committed.
[workspace]
members = [{members}]
resolver = "3"
""")
    lock = WORK / "Cargo.lock"
    if not lock.exists():
        # Same dependency versions as the repository's own build.
        shutil.copy(REPO / "Cargo.lock", lock)
    for crate in ALL_CRATES:
        # target/compile-time/<crate> -> repository root is three levels up.
        write_if_changed(WORK / crate / "Cargo.toml", f"""[package]
name = "{crate}"
version = "0.0.0"
edition = "2024"
publish = false

[lib]
path = "lib.rs"

[dependencies]
diesel-atomic = {{ path = "../../.." }}
diesel = {{ version = "2.3.14", default-features = false, features = ["sqlite", "r2d2"] }}
""")
        gen = GENERATORS[crate]
        header = HEADERS[crate] or HEADERS["hand_written"].replace(
            "hand-written `conn.transaction` wrappers",
            "hand-written `conn.transaction` wrappers that roll back on a panic")
        text = header.format(n=FUNCTIONS) + TABLE + "".join(
            "\n" + gen(i) for i in range(FUNCTIONS))
        write_if_changed(WORK / crate / "lib.rs", text)


# ---------------------------------------------------------------------------------------------
# Measuring

def cargo(args, **kw):
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET), CARGO_TERM_COLOR="never")
    env.pop("RUSTFLAGS", None)
    # `--offline` right after the subcommand: anything after `--` goes to rustc.
    cmd = ["cargo", args[0]] + (["--offline"] if OFFLINE else []) + args[1:]
    return subprocess.run(cmd, cwd=WORK, env=env, **kw)


def must(args):
    r = cargo(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        sys.exit(f"failed: cargo {' '.join(args)}")
    return r


def timed_build(mode, crate):
    sub, clean = MODE_ARGS[mode]
    must(["clean", "-p", crate] + clean)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    must(sub + ["-p", crate])
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def count_code_lines(text):
    return sum(1 for line in text.splitlines() if line.strip())


TOKEN_RE = re.compile(r'"(?:\\.|[^"\\])*"|[A-Za-z_][A-Za-z0-9_]*|\d+|::|->|=>|\S')


def count_tokens(text):
    text = re.sub(r"//[^\n]*", "", text)
    return len(TOKEN_RE.findall(text))


def expanded(crate):
    """The crate after macro expansion, via rustc's -Zunpretty=expanded (what cargo-expand
    does; needs RUSTC_BOOTSTRAP=1 on a stable toolchain). Only the generated functions are
    counted: the `table!` expansion is the same in every crate. None if it fails."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET / "expand"), RUSTC_BOOTSTRAP="1")
    # A separate target directory: RUSTC_BOOTSTRAP may change dependency fingerprints.
    r = subprocess.run(
        ["cargo", "rustc", "-p", crate, "--lib", "--profile", "check"]
        + (["--offline"] if OFFLINE else []) + ["--", "-Zunpretty=expanded"],
        cwd=WORK, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return None
    text = r.stdout
    start = text.find("pub fn f_0(")
    return text[start:] if start >= 0 else None


IR_GROUPS = [
    # (label, substring of the mangled name)
    ("catch_unwind + do_call + do_catch", ("12catch_unwind", "7do_call", "8do_catch")),
    ("run_explicit / run_ambient", ("12run_explicit", "11run_ambient")),
    ("Connection::transaction + TransactionManager::transaction", ("11transaction",)),
    ("connection() / Db::connection", ("7ambient10connection", "2Db$GT$10connection")),
    ("closures", ("closure",)),
]


def llvm_ir(crate):
    """Debug LLVM IR of the crate (one codegen unit): total lines, functions defined, and
    functions per group. Reuses the dependencies already built; only this crate is rebuilt."""
    sub, clean = MODE_ARGS["debug"]
    must(["clean", "-p", crate])
    r = cargo(["rustc", "-p", crate, "--lib", "--", "--emit=llvm-ir", "-Ccodegen-units=1"],
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    files = sorted((TARGET / "debug" / "deps").glob(f"{crate}-*.ll"),
                   key=lambda f: f.stat().st_mtime)
    if r.returncode != 0 or not files:
        return None
    text = files[-1].read_text()
    files[-1].unlink()
    names = [line.split("@", 1)[1].split("(", 1)[0]
             for line in text.splitlines() if line.startswith("define ")]
    groups = {label: sum(1 for n in names if any(k in n for k in keys))
              for label, keys in IR_GROUPS}
    must(["clean", "-p", crate])
    return text.count("\n"), len(names), groups


def fmt(x):
    return f"{x:.2f}"


def main():
    print(f"generating {FUNCTIONS} functions per crate under {WORK.relative_to(REPO)}/")
    generate()

    print("warm-up: building the dependencies once per mode (not timed)")
    for mode in MODES:
        sub, _ = MODE_ARGS[mode]
        t0 = time.perf_counter()
        must(sub + ["--workspace"])
        print(f"  {mode}: {time.perf_counter() - t0:.1f} s")

    times = {(m, c): [] for m in MODES for c in CRATES}
    cpus = {(m, c): [] for m in MODES for c in CRATES}
    loads = []
    for r in range(N):
        for mode in MODES:
            order = CRATES if (r % 2 == 0) else list(reversed(CRATES))
            for crate in order:
                loads.append(loadavg())
                t, c = timed_build(mode, crate)
                times[(mode, crate)].append(t)
                cpus[(mode, crate)].append(c)
                print(f"  round {r + 1}/{N} {mode:15} {crate:14} {t:7.2f} s wall"
                      f" {c:7.2f} s cpu  (load {loads[-1]:.2f})", flush=True)

    # Sizes: the source as written, and after expansion.
    sizes = {}
    for crate in CRATES:
        src = (WORK / crate / "lib.rs").read_text()
        start = src.find("pub fn f_0(")
        start = src.rfind("\n#[atomic", 0, start) + 1 if crate == "with_atomic" else start
        fns = src[start:]
        exp = expanded(crate)
        sizes[crate] = (count_code_lines(src), count_tokens(fns),
                        count_code_lines(exp) if exp else None,
                        count_tokens(exp) if exp else None)

    ir = {crate: llvm_ir(crate) for crate in CRATES} if os.environ.get("IR", "1") != "0" else {}

    lines = []
    w = lines.append
    w("# Compile-time cost of `#[atomic]`: results")
    w("")
    w(f"Generated by `bench/compile-time/run` on {time.strftime('%Y-%m-%d %H:%M')}: "
      f"{FUNCTIONS} functions per crate, N={N} clean builds of each crate per mode, "
      f"alternating crates (order reversed every round).")
    rustc = subprocess.run(["rustc", "--version"], cwd=REPO, stdout=subprocess.PIPE,
                           text=True).stdout.strip()
    w(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), {rustc}; "
      f"1-minute load average during the runs {min(loads):.2f}-{max(loads):.2f}.")
    w("")
    w("`cargo build -p <crate>` after `cargo clean -p <crate>` (dependencies already built), "
      "seconds. Wall = elapsed time; CPU = user + system time of cargo and rustc, which the "
      "other work on a shared machine disturbs much less than the wall time.")
    w("")
    w("| mode | crate | wall median | wall min | wall max | wall ratio | "
      "CPU median | CPU min | CPU max | CPU ratio |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    med = statistics.median
    for mode in MODES:
        row = []
        for crate in CRATES:
            cells = []
            for series in (times, cpus):
                ts = series[(mode, crate)]
                base = med(series[(mode, "hand_written")]) if "hand_written" in CRATES else None
                ratio = f"{med(ts) / base:.2f}x" if base else "-"
                cells += [fmt(med(ts)), fmt(min(ts)), fmt(max(ts)), ratio]
            w(f"| {mode} | {crate} | " + " | ".join(cells) + " |")
    w("")
    if "with_atomic" in CRATES and "hand_written" in CRATES:
        for label, series in (("wall", times), ("CPU", cpus)):
            w(f"**with_atomic / hand_written, {label}** (median over median): " + ", ".join(
                f"{m} {med(series[(m, 'with_atomic')]) / med(series[(m, 'hand_written')]):.2f}x"
                for m in MODES))
            w("")
    if "with_atomic" in CRATES and "hand_written_unwind" in CRATES:
        w("**with_atomic / hand_written_unwind, CPU** (the same panic rule by hand): " + ", ".join(
            f"{m} {med(cpus[(m, 'with_atomic')]) / med(cpus[(m, 'hand_written_unwind')]):.2f}x"
            for m in MODES))
        w("")
    if all(c in CRATES for c in ("with_atomic", "hand_written", "hand_expanded")):
        w("Split of the extra CPU time (medians): running the macro = with_atomic - "
          "hand_expanded; compiling what it generates = hand_expanded - hand_written.")
        w("")
        w("| mode | extra total (s) | running the macro (s) | compiling its output (s) |")
        w("| --- | ---: | ---: | ---: |")
        for m in MODES:
            a, h, e = (med(cpus[(m, c)]) for c in
                       ("with_atomic", "hand_written", "hand_expanded"))
            w(f"| {m} | {fmt(a - h)} | {fmt(a - e)} | {fmt(e - h)} |")
        w("")
    w("Sizes (non-blank lines of lib.rs; tokens of the functions only, without the shared "
      "header and `table!`; expanded = rustc `-Zunpretty=expanded`, functions only):")
    w("")
    w("| crate | lines | tokens | expanded lines | expanded tokens |")
    w("| --- | ---: | ---: | ---: | ---: |")
    for crate in CRATES:
        l, t, el, et = sizes[crate]
        w(f"| {crate} | {l} | {t} | {el if el is not None else 'n/a'} | "
          f"{et if et is not None else 'n/a'} |")
    w("")
    if ir and all(ir.values()):
        w("What the compiler generates (debug LLVM IR, one codegen unit, "
          "`--emit=llvm-ir`): functions defined, in total and by kind:")
        w("")
        w("| crate | IR lines | functions | " + " | ".join(l for l, _ in IR_GROUPS) + " |")
        w("| --- | ---: | ---: | " + " | ".join("---:" for _ in IR_GROUPS) + " |")
        for crate in CRATES:
            n_lines, n_fns, groups = ir[crate]
            w(f"| {crate} | {n_lines} | {n_fns} | "
              + " | ".join(str(groups[l]) for l, _ in IR_GROUPS) + " |")
        w("")
    w("All runs (wall seconds, CPU seconds, in order):")
    w("")
    for mode in MODES:
        for crate in CRATES:
            w(f"- {mode} {crate}: " + ", ".join(
                f"{fmt(t)} ({fmt(c)} CPU)" for t, c in zip(times[(mode, crate)],
                                                          cpus[(mode, crate)])))
    w("")

    report = "\n".join(lines)
    print()
    print(report)
    OUT.write_text(report)
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
