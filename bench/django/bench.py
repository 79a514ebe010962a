"""Django's half of the side-by-side benchmark (issue 8); `./run` runs it and benches/vs_django.rs.

    python bench.py             one JSON line per workload: CPU (and wall) ns per block
    python bench.py report F    the markdown ratio table from the JSON lines in file F

Each workload is BLOCKS `transaction.atomic()` blocks on a SQLite file database in WAL mode
with synchronous=NORMAL, the same pragmas as the Rust side sets on its connections.
"""

import json
import os
import sqlite3
import sys
import tempfile
import time
from math import inf

BLOCKS = int(os.environ.get("BLOCKS", 10_000))
REPS = int(os.environ.get("REPS", 5))
CHUNK = 1_000  # as in benches/vs_django.rs
# WAL and synchronous=NORMAL as in issue 8. Debian's SQLite (which Python may link) defaults to
# secure_delete=ON and Python's sqlite3 to a 5 s busy timeout: both set here, on both sides.
PRAGMAS = ("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
           "PRAGMA secure_delete=OFF; PRAGMA busy_timeout=5000;")
# What both sides print, to show the connections are set up alike.
SHOWN_PRAGMAS = ["journal_mode", "synchronous", "foreign_keys", "cache_size", "page_size",
                 "temp_store", "locking_mode", "busy_timeout", "cache_spill", "automatic_index",
                 "secure_delete"]
WORKLOADS = ["orm_insert", "raw_insert", "empty", "nested4", "on_commit"]


def bench():
    import django
    from django.conf import settings

    tmp = tempfile.TemporaryDirectory(prefix="diesel-atomic-vs-django-")
    settings.configure(
        DATABASES={"default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(tmp.name, "bench.sqlite3"),
            "OPTIONS": {"init_command": PRAGMAS},
        }},
        USE_TZ=True,
    )
    django.setup()
    from django.db import connection, models, transaction

    class Row(models.Model):
        n = models.IntegerField()

        class Meta:
            app_label = "bench"

    with connection.schema_editor() as editor:
        editor.create_model(Row)
    cursor = connection.cursor()
    insert = f"INSERT INTO {Row._meta.db_table} (n) VALUES (%s)"
    atomic = transaction.atomic

    def callback():
        pass

    def orm_insert(i):
        with atomic():
            Row.objects.create(n=i)

    def raw_insert(i):
        with atomic():
            cursor.execute(insert, [i])

    def empty(i):
        with atomic():
            pass

    def nested4(i):
        with atomic():
            with atomic():
                with atomic():
                    with atomic():
                        pass

    def on_commit(i):
        with atomic():
            transaction.on_commit(callback)

    blocks = {"orm_insert": orm_insert, "raw_insert": raw_insert, "empty": empty,
              "nested4": nested4, "on_commit": on_commit}
    # This thread's CPU time, as on the Rust side: it leaves out the time other processes take
    # the CPU, most of the noise on a shared machine. Wall time is printed too. A workload's time
    # is the sum over its chunks of CHUNK blocks of each chunk's best time in REPS repetitions.
    chunks = [range(start, min(start + CHUNK, BLOCKS)) for start in range(0, BLOCKS, CHUNK)]
    best = {name: [[inf, inf] for _ in chunks] for name in WORKLOADS}
    for _ in range(REPS):
        for name, block in blocks.items():
            for chunk, best_chunk in zip(chunks, best[name]):
                cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
                for i in chunk:
                    block(i)
                best_chunk[0] = min(best_chunk[0], time.thread_time_ns() - cpu)
                best_chunk[1] = min(best_chunk[1], time.perf_counter_ns() - wall)
    for name in WORKLOADS:
        cpu, wall = (sum(chunk[k] for chunk in best[name]) / BLOCKS for k in (0, 1))
        print(json.dumps({"flavour": "django", "workload": name, "ns_per_block": cpu,
                          "wall_ns_per_block": wall}))

    cursor.execute("SELECT count(*) FROM " + Row._meta.db_table)
    assert cursor.fetchone()[0] == 2 * REPS * BLOCKS, "every insert was committed"
    pragmas = {p: cursor.execute(f"SELECT * FROM pragma_{p}").fetchone()[0] for p in SHOWN_PRAGMAS}
    print(json.dumps({"flavour": "django", "versions": {
        "django": django.get_version(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
    }, "pragmas": pragmas}))
    tmp.cleanup()


FLAVOURS = ["django", "diesel", "diesel_pool", "explicit", "ambient"]


def table(best):
    """Markdown rows: ns per block of each flavour, Django's ratios, and the target."""
    out = [
        "| workload | Django | diesel | diesel + pool.get() | diesel-atomic explicit "
        "| diesel-atomic ambient | Django/diesel | Django/explicit | Django/ambient "
        "| target: Django/ours ≥ 0.98 × Django/diesel (ours / diesel's time) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for w in WORKLOADS:
        django, diesel, pooled, explicit, ambient = [best.get((f, w)) for f in FLAVOURS]
        ratios = [django / t if t else None for t in (diesel, explicit, ambient)]
        if diesel:
            met = ", ".join(
                f"{name} {'yes' if t <= diesel / 0.98 else '**NO**'} ({t / diesel:.3f}×)"
                for name, t in [("explicit", explicit), ("ambient", ambient)])
            met += f"; ambient / diesel + pool.get(): {ambient / pooled:.3f}×"
        else:
            met = "n/a: diesel has no on_commit"
        cells = [f"{t:,.0f}" if t else "–" for t in (django, diesel, pooled, explicit, ambient)]
        cells += [f"{r:.1f}×" if r else "–" for r in ratios]
        out.append(f"| {w} | " + " | ".join(cells) + f" | {met} |")
    return out


def report(path):
    """The best time per flavour and workload over all runs, as markdown."""
    cpu, wall, info = {}, {}, {}
    with open(path) as lines:
        for row in map(json.loads, lines):
            if "workload" in row:
                key = (row["flavour"], row["workload"])
                cpu[key] = min(cpu.get(key, inf), row["ns_per_block"])
                wall[key] = min(wall.get(key, inf), row["wall_ns_per_block"])
            else:
                info[row["flavour"]] = row
    d, r = info["django"], info["diesel"]
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "unknown CPU")
    out = [
        f"CPU time of the thread (user and system) per block, in ns, of {BLOCKS:,} blocks: the "
        f"sum over chunks of {CHUNK:,} blocks of each chunk's best time in {REPS} repetitions; the "
        "best of all runs. A ratio is Django's time over the Rust flavour's, how many times "
        "faster it is.",
        "",
        *table(cpu),
        "",
        "The same in wall time (other processes' load included):",
        "",
        *table(wall),
        "",
        f"Django {d['versions']['django']} on Python {d['versions']['python']}, whose sqlite3 "
        f"module links SQLite {d['versions']['sqlite']}; diesel and diesel-atomic use the SQLite "
        f"that libsqlite3-sys bundles, {r['versions']['sqlite']}. {model}, "
        f"{os.cpu_count()} CPUs.",
        "",
        "| pragma | Django's connection | diesel's connection |",
        "|---|---|---|",
    ]
    out += [f"| {p} | {d['pragmas'][p]} | {r['pragmas'][p]} |" for p in SHOWN_PRAGMAS]
    print("\n".join(out))


if __name__ == "__main__":
    if sys.argv[1:2] == ["report"]:
        report(sys.argv[2])
    else:
        bench()
