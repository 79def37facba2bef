"""The import and backfill benchmarks (run through scripts/bench, which provisions and builds first).

Each contender loads the same rows into a fresh, identical `data_ingestion.market_data` (made by
`mdingest migrate`), all in this one run, so the ratios compare like with like on this machine.

Import (a Polygon flat file, 1000 symbols x 1000 minutes by default):

  mdingest import          the flat file (window_start in ns), COPY-merge pipeline
  psql \\copy               raw COPY of the same rows, already in the table's shape
  psql staging upsert      \\copy into a temp table, then INSERT ... ON CONFLICT DO UPDATE
  (again over existing rows: mdingest re-import vs the same psql staging upsert)

Backfill (mdingest-sim serving 10 symbols' minute bars of 2024 by default, about 1,000,000 bars):

  simulator alone          every page of the backfill's windows (the 30-day grid), fetched with
                           http.client by 4 threads: the transfer alone, nothing stored
  mdingest backfill        the same windows through the REST client and the pipeline, fresh,
                           then again with --force over the loaded table (identical rows)
  psql \\copy / staging upsert of the same rows, written as a table-shaped CSV from the
                           simulator's pages in a separate, untimed pass

Scale (500 symbols x a year of minute bars, about 51 million rows, in a plain and a monthly
partitioned table, kept between runs as mdbench_scale_*): 1,000,000 new rows of the same symbols
merged by `mdingest import` into the full tables and into empty ones, the same file once more
(every row exists: the ON CONFLICT path), and `mdingest coverage` over the year.

Stream (`mdingest run` on mdingest-sim's WebSocket replaying 1000 symbols at 50,000 bars/s in
all): bars/s committed over 20 s, and each committed batch's receipt-to-commit lag (its oldest
row's) as the daemon logs it at debug (target mdingest::lag).

Before each contender: a CHECKPOINT, and a wait (up to 5 minutes) for the machine to be quiet.
While it runs, the CPU used by the client (psql, mdingest, this script), the simulator,
PostgreSQL (the processes working for the contender's database) and everything else is recorded
and printed; a figure that other processes disturbed is named at the end.
"""
import argparse
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from http.client import HTTPConnection
from urllib.parse import urlencode, urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "mdingest")
SIM = os.path.join(ROOT, "target", "release", "mdingest-sim")
CONFIG = os.path.join(ROOT, "config", "mdingest.toml")
OUT = os.path.join(ROOT, "bench-out")
os.environ["PGOPTIONS"] = "-c client_min_messages=warning"
ADMIN = os.environ.get("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
GNU_TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def db_url(name):
    return ADMIN.rsplit("/", 1)[0] + "/" + name


def psql(url, sql, stdin=None):
    subprocess.run(["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                   check=True, stdout=subprocess.DEVNULL, stdin=stdin)


def psql_script(url, script):
    subprocess.run(["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=script.encode(),
                   check=True, stdout=subprocess.DEVNULL)


def psql_value(url, sql):
    out = subprocess.run(["psql", url, "-XtAc", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def fresh_db(name):
    psql(ADMIN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    psql(ADMIN, f'CREATE DATABASE "{name}"')
    env = dict(os.environ, MDINGEST__DATABASE__URL=db_url(name))
    subprocess.run([BIN, "--config", CONFIG, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    return db_url(name)


def drop_dbs(names):
    for name in names:
        psql(ADMIN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fail(msg):
    print(f"bench: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# Timing, and where the CPU went: this process, its children (psql, mdingest), the simulator,
# PostgreSQL, and everything else on the machine (another build or test run skews a figure).

def cpu_snapshot():
    """(busy, all) CPU ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def proc_ticks(pid, children_too=False):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the comm: state is fields[0]; utime, stime, cutime, cstime are fields[11..14].
    t = int(fields[11]) + int(fields[12])
    if children_too:
        t += int(fields[13]) + int(fields[14])
    return t


def postmaster_pid():
    """The PostgreSQL server's main process here, or None (another machine, or not readable)."""
    try:
        data_dir = psql_value(ADMIN, "SHOW data_directory")
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            pid = int(f.readline())
        with open(f"/proc/{pid}/task/{pid}/children"):
            return pid
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None


# A client backend's title names its user, database and peer: "... postgres mydb 127.0.0.1(5678) idle".
CLIENT_TITLE = re.compile(r"\(\d+\)|\[local\]")


class PostgresSampler:
    """CPU-seconds of the PostgreSQL processes working for one database: its client backends and
    the server's own (checkpointer, WAL writer, autovacuum, ...), not other databases' backends
    (another test run's: those count as `others`). Sampled from /proc every 20 ms, since a
    backend's CPU vanishes with it."""

    def __init__(self, postmaster, db):
        self.postmaster, self.db = postmaster, db
        self.seen = {}  # (pid, start time) -> [ticks at first sight, latest ticks, ours?]
        self.first = True
        self.sample()
        self.first = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.wait(0.02):
            self.sample()

    def sample(self):
        try:
            with open(f"/proc/{self.postmaster}/task/{self.postmaster}/children") as f:
                pids = f.read().split()
        except OSError:
            return
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                key = (pid, fields[19])
                ticks = int(fields[11]) + int(fields[12])
                entry = self.seen.get(key)
                if entry is None:
                    # Present when the clock started: only what it uses from now on counts.
                    entry = self.seen[key] = [ticks if self.first else 0, ticks, None]
                entry[1] = ticks
                if entry[2] is None:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        title = f.read().replace(b"\0", b" ").decode(errors="replace")
                    if CLIENT_TITLE.search(title):
                        entry[2] = self.db is not None and self.db in title.split()
            except (OSError, ValueError, IndexError):
                pass

    def stop(self):
        """CPU-seconds since the start."""
        self.done.set()
        self.thread.join()
        self.sample()
        # A process never seen as a client backend is one of the server's own.
        return sum(last - first for first, last, ours in self.seen.values()
                   if ours is not False) / CLK_TCK


POSTMASTER = "unknown"
SIM_PID = None  # the running simulator's, if any
RUNS = {}  # label -> what timed() measured
BUSY_WARNINGS = []


def probe():
    me = os.times()
    sim = None
    if SIM_PID is not None:
        try:
            sim = proc_ticks(SIM_PID)
        except OSError:
            pass
    return {"machine": cpu_snapshot()[0], "sim": sim,
            "client": me.user + me.system + me.children_user + me.children_system}


def wait_for_backends(db):
    """Until db's client backends are gone (a client's backend outlives it briefly)."""
    for _ in range(300):
        if psql_value(ADMIN, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                             f"'client backend' AND datname = '{db}'") == "0":
            break
        time.sleep(0.01)


def wait_quiet(label, limit_secs=300):
    """Waits (up to limit_secs) until the machine is nearly idle, so that another process's
    build or test run does not land in a contender's time; says so while waiting."""
    waited = 0.0
    while True:
        a = cpu_snapshot()
        time.sleep(0.5)
        b = cpu_snapshot()
        busy = (b[0] - a[0]) / max(1, b[1] - a[1])
        if busy < 0.15:
            return
        if waited == 0:
            print(f"  (the machine is {busy:.0%} busy with something else: waiting for it to calm down)",
                  file=sys.stderr)
        waited += 0.5
        if waited >= limit_secs:
            BUSY_WARNINGS.append(f"{label}: started while the machine was still {busy:.0%} busy after {limit_secs} s")
            return


def timed(label, fn, db):
    """Seconds fn takes, loading into database db (None: no database). Every contender starts without the previous
    one's dirty pages and WAL to write out, and on a quiet machine; the CPU each party used
    meanwhile goes to RUNS[label]."""
    global POSTMASTER
    if POSTMASTER == "unknown":
        POSTMASTER = postmaster_pid()
    psql(ADMIN, "CHECKPOINT")
    wait_quiet(label)
    pg = PostgresSampler(POSTMASTER, db) if POSTMASTER else None
    p0 = probe()
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    p1 = probe()
    if db:
        wait_for_backends(db)
    d = {k: (p1[k] - p0[k] if p0[k] is not None and p1[k] is not None else None) for k in p0}
    for k in ("machine", "sim"):
        if d[k] is not None:
            d[k] /= CLK_TCK
    d["postgres"] = pg.stop() if pg else None
    known = d["client"] + (d["postgres"] or 0) + (d["sim"] or 0)
    d["others"] = max(0.0, d["machine"] - known) if pg else None
    d["seconds"] = t
    RUNS[label] = d
    if d["others"] is not None and d["others"] > 0.5 + 0.1 * t:
        BUSY_WARNINGS.append(f"{label}: other processes used {d['others']:.1f} CPU-s of its {t:.1f} s")
    return t


# ---------------------------------------------------------------------------------------------
# Running mdingest: peak RSS.

def vm_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tail(path):
    with open(path) as f:
        lines = f.read().strip().splitlines()
    return " | ".join(lines[-3:])


def run_measured(cmd, env):
    """Runs cmd (stdout captured, stderr to bench-out/last-stderr.txt); returns (stdout, peak RSS
    in kB). Peak RSS comes from GNU time when installed, else from polling the process's own
    VmHWM every 2 ms (not getrusage of children: a forked child starts with its parent's
    high-water mark, so that could report this Python process's peak)."""
    err_path = os.path.join(OUT, "last-stderr.txt")
    with open(err_path, "w") as err:
        if GNU_TIME:
            stats = os.path.join(OUT, "time.txt")
            p = subprocess.run([GNU_TIME, "-f", "%M", "-o", stats] + cmd, env=env,
                               stdout=subprocess.PIPE, stderr=err, text=True)
            if p.returncode != 0:
                fail(f"{' '.join(cmd[3:])} exited {p.returncode}: {tail(err_path)}")
            with open(stats) as f:
                return p.stdout, int(f.read().split()[-1])
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out = []
        reader = threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True)
        reader.start()
        peak = 0
        while p.poll() is None:
            peak = max(peak, vm_hwm_kb(p.pid))
            time.sleep(0.002)
        reader.join()
        if p.returncode != 0:
            fail(f"{' '.join(cmd[3:])} exited {p.returncode}: {tail(err_path)}")
        return out[0], peak


def db_of(url):
    return url.rsplit("/", 1)[1]


def measured(label, cmd, env):
    """(seconds, stdout, peak RSS kB) of one timed run of cmd."""
    res = {}

    def go():
        res["out"], res["rss"] = run_measured(cmd, env)

    t = timed(label, go, db_of(env["MDINGEST__DATABASE__URL"]))
    return t, res["out"], res["rss"]


def summary_counts(text):
    """The numbers of mdingest's summary (`  inserted   1000`)."""
    counts = {}
    for line in text.splitlines():
        m = re.match(r"\s+(\w[\w/ ]*?)\s+(\d+)$", line)
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


# ---------------------------------------------------------------------------------------------
# Import.

def generate(symbols, minutes):
    os.makedirs(OUT, exist_ok=True)
    flat = os.path.join(OUT, f"minute_aggs_{symbols}x{minutes}.csv")
    table = os.path.join(OUT, f"table_rows_{symbols}x{minutes}.csv")
    if os.path.exists(flat) and os.path.exists(table):
        return flat, table
    start = int(datetime(2024, 1, 2, 9, 0, tzinfo=timezone.utc).timestamp())
    with open(flat, "w") as f, open(table, "w") as t:
        f.write("ticker,volume,open,close,high,low,window_start,transactions\n")
        for s in range(symbols):
            sym = f"S{s:04d}"
            base = 20 + (s * 7919) % 480
            for m in range(minutes):
                o = base + (m % 97) * 0.0137
                c = o + ((m * 31) % 11 - 5) * 0.0101
                h = max(o, c) + 0.0523
                lo = min(o, c) - 0.0411
                v = 100 + (m * 131 + s) % 90000
                secs = start + 60 * m
                f.write(f"{sym},{v},{o:.4f},{c:.4f},{h:.4f},{lo:.4f},{secs * 1_000_000_000},{v // 50 + 1}\n")
                ts = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")
                t.write(f"{sym},{ts},{o:.4f},{h:.4f},{lo:.4f},{c:.4f},{v},polygon\n")
    return flat, table


def mdingest_import(label, url, flat):
    """Seconds and peak RSS in kB."""
    env = dict(os.environ, MDINGEST__DATABASE__URL=url)
    cmd = [BIN, "--config", CONFIG, "import", "--format", "polygon-flatfile", flat]
    t, _, rss_kb = measured(label, cmd, env)
    return t, rss_kb


COLS = "(symbol, timestamp, open, high, low, close, volume, data_source)"


def psql_copy(label, url, table):
    return timed(label, lambda: psql_script(url, f"\\copy data_ingestion.market_data {COLS} FROM '{table}' WITH (FORMAT csv)\n"),
                 db_of(url))


def psql_staging_upsert(label, url, table):
    script = f"""
BEGIN;
CREATE TEMP TABLE stage (LIKE data_ingestion.market_data INCLUDING DEFAULTS) ON COMMIT DROP;
\\copy stage {COLS} FROM '{table}' WITH (FORMAT csv)
INSERT INTO data_ingestion.market_data {COLS}
SELECT symbol, timestamp, open, high, low, close, volume, data_source FROM stage
ON CONFLICT (symbol, timestamp, data_source) DO UPDATE
SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
    close = EXCLUDED.close, volume = EXCLUDED.volume;
COMMIT;
"""
    return timed(label, lambda: psql_script(url, script), db_of(url))


def count(url):
    return int(psql_value(url, "SELECT count(*) FROM data_ingestion.market_data"))


def print_table(rows, part, names):
    print(f"{'contender':<44} {'seconds':>8} {'rows/s':>10}")
    for name in names:
        t = RUNS[f"{part}: {name}"]["seconds"]
        print(f"{name:<44} {t:>8.2f} {rows / t:>10.0f}")
    print()


def print_cpu(part, names):
    """Where the time went: each party's CPU-seconds while a contender ran."""
    fmt = lambda v: f"{v:8.2f}" if v is not None else "       ?"
    print("CPU-seconds while each ran (2 cores: at most 2 a second; client = psql, mdingest or python)")
    print(f"{'contender':<44} {'wall':>8} {'client':>8} {'sim':>8} {'postgres':>8} {'others':>8}")
    for name in names:
        r = RUNS[f"{part}: {name}"]
        print(f"{name:<44} {r['seconds']:8.2f} {fmt(r['client'])} {fmt(r['sim']) if r['sim'] is not None else ' ' * 8}"
              f" {fmt(r['postgres'])} {fmt(r['others'])}")
    print()


def print_checks(checks, rss_mb):
    for name, ratio, target in checks:
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        print(f"{name:<50} {ratio:5.2f}x  (target >= {target}x)  {verdict}")
    verdict = "ok" if rss_mb <= 64 else "ABOVE TARGET"
    print(f"{'mdingest peak RSS':<50} {rss_mb:5.1f} MB (target <= 64 MB)  {verdict}")
    print()


IMPORT_NAMES = [
    "psql \\copy (raw, fresh table)",
    "psql staging upsert (fresh table)",
    "psql staging upsert (existing rows)",
    "mdingest import (fresh table)",
    "mdingest import (identical re-import)",
]


def bench_import(args):
    rows = args.symbols * args.rows_per_symbol
    print(f"generating {rows} minute bars ({args.symbols} symbols x {args.rows_per_symbol} minutes)", file=sys.stderr)
    flat, table = generate(args.symbols, args.rows_per_symbol)
    copy, stage, stage_again, md, md_again = (f"import: {n}" for n in IMPORT_NAMES)

    print("psql \\copy into a fresh table ...", file=sys.stderr)
    url = fresh_db("mdbench_copy")
    t_copy = psql_copy(copy, url, table)
    assert count(url) == rows

    print("psql staging upsert into a fresh table, then again over the existing rows ...", file=sys.stderr)
    url = fresh_db("mdbench_psql")
    t_stage = psql_staging_upsert(stage, url, table)
    t_stage_again = psql_staging_upsert(stage_again, url, table)
    assert count(url) == rows

    print("mdingest import into a fresh database, then the identical file again ...", file=sys.stderr)
    url = fresh_db("mdbench_mdingest")
    t_md, rss_kb = mdingest_import(md, url, flat)
    assert count(url) == rows, "mdingest did not load every row"
    t_md_again, rss2_kb = mdingest_import(md_again, url, flat)
    rss_mb = max(rss_kb, rss2_kb) / 1024

    print()
    print("== import ==")
    print(f"rows: {rows}")
    print_table(rows, "import", IMPORT_NAMES)
    print_checks([
        ("import vs psql staging upsert", t_stage / t_md, 1.0),
        ("import vs raw psql \\copy", t_copy / t_md, 0.8),
        ("re-import vs psql staging upsert (existing)", t_stage_again / t_md_again, 2.0),
    ], rss_mb)
    print_cpu("import", IMPORT_NAMES)
    sys.stdout.flush()
    drop_dbs(["mdbench_copy", "mdbench_psql", "mdbench_mdingest"])


# ---------------------------------------------------------------------------------------------
# Scale: a year of minute bars for 500 symbols (about 51 million rows), plain and partitioned.

SCALE_NAMES = [
    "merge into an empty plain table",
    "merge into the plain table holding the year",
    "merge into an empty partitioned table",
    "merge into the partitioned table holding the year",
]
# The same file once more: every row exists, so every batch takes the staged ON CONFLICT path.
REMERGE_NAMES = [
    "re-merge, plain table of the file alone",
    "re-merge, plain table holding the year",
    "re-merge, partitioned table of the file alone",
    "re-merge, partitioned table holding the year",
]


def scale_db(name, layout, symbols):
    """A database holding `symbols` symbols' minute bars of every 2024 weekday (09:30-16:00 New
    York), in `layout`; kept between runs (it takes minutes to make) and checked by its count."""
    rows = symbols * 262 * 390
    url = db_url(name)
    exists = psql_value(ADMIN, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1"
    env = dict(os.environ, MDINGEST__DATABASE__URL=url, MDINGEST__DATABASE__PARTITIONING=layout)
    if exists:
        try:
            # A table kept from an older build gets this build's migrations (and counts).
            subprocess.run([BIN, "--config", CONFIG, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
            forget_appended(url, layout)
            if count(url) == rows and counted(url) == rows:
                print(f"  {name}: {rows} rows kept from an earlier run")
                return url, rows
        except subprocess.CalledProcessError:
            pass
    psql(ADMIN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    psql(ADMIN, f'CREATE DATABASE "{name}"')
    subprocess.run([BIN, "--config", CONFIG, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    step = 25
    for first in range(0, symbols, step):
        last = min(symbols, first + step) - 1
        if layout == "monthly":
            if first == 0:
                for m in range(1, 13):
                    nxt = f"2025-01-01" if m == 12 else f"2024-{m + 1:02d}-01"
                    psql(url, f"CREATE TABLE IF NOT EXISTS data_ingestion.market_data_p2024_{m:02d} "
                              f"PARTITION OF data_ingestion.market_data "
                              f"FOR VALUES FROM ('2024-{m:02d}-01 00:00+00') TO ('{nxt} 00:00+00')")
        psql(url, f"""
INSERT INTO data_ingestion.market_data (symbol, timestamp, open, high, low, close, volume, data_source)
SELECT 'S' || lpad(s::text, 4, '0'), t, 20 + s % 400, 20.5 + s % 400, 19.5 + s % 400, 20.25 + s % 400,
       100 + s, 'polygon'
FROM generate_series({first}, {last}) AS s,
     generate_series('2024-01-01'::date, '2024-12-31'::date, '1 day') AS day,
     LATERAL generate_series((day::date + time '09:30') AT TIME ZONE 'America/New_York',
                             (day::date + time '15:59') AT TIME ZONE 'America/New_York',
                             '1 minute') AS t
WHERE extract(isodow FROM day) < 6
ORDER BY 1, 2""")
        done = (last + 1) * 262 * 390
        print(f"  {name}: {done}/{rows} rows ({done / (time.perf_counter() - t0):.0f} rows/s)",
              file=sys.stderr)
    psql(url, "VACUUM ANALYZE data_ingestion.market_data")
    assert count(url) == rows, f"{name}: not every row generated"
    assert counted(url) == rows, f"{name}: bar_counts did not count every row"
    return url, rows


def counted(url):
    return int(psql_value(url, "SELECT coalesce(sum(bars), 0) FROM data_ingestion.bar_counts"))


def forget_appended(url, layout):
    """Takes a run's merged rows out again, leaving no dead rows for the next run to wade
    through: the month's partition dropped, or the rows deleted and vacuumed away."""
    if layout == "monthly":
        # No trigger sees a partition dropped: its counts go by hand.
        psql(url, "DROP TABLE IF EXISTS data_ingestion.market_data_p2025_01")
        psql(url, "DELETE FROM data_ingestion.bar_counts WHERE slot >= '2025-01-01'")
        psql(url, "VACUUM data_ingestion.bar_counts")
    else:
        psql(url, "DELETE FROM data_ingestion.market_data WHERE timestamp >= '2025-01-01'")
        psql(url, "VACUUM data_ingestion.market_data")


def append_file(symbols, minutes):
    """The next days' bars of the same symbols, as a Polygon flat file: what a daily load merges."""
    path = os.path.join(OUT, f"append_{symbols}x{minutes}.csv")
    if os.path.exists(path):
        return path
    start = int(datetime(2025, 1, 2, 14, 30, tzinfo=timezone.utc).timestamp())
    with open(path, "w") as f:
        f.write("ticker,volume,open,close,high,low,window_start,transactions\n")
        for s in range(symbols):
            for m in range(minutes):
                o = 20 + s % 400 + (m % 97) * 0.0137
                f.write(f"S{s:04d},{100 + m},{o:.4f},{o + 0.01:.4f},{o + 0.05:.4f},{o - 0.04:.4f},"
                        f"{(start + 60 * m) * 1_000_000_000},{m // 50 + 1}\n")
    return path


def mdingest_coverage(label, url, exact):
    env = dict(os.environ, MDINGEST__DATABASE__URL=url)
    cmd = [BIN, "--config", CONFIG, "coverage", "--source", "polygon", "--from", "2024-01-01",
           "--to", "2024-12-31", "--json"] + (["--exact"] if exact else [])
    t, out, rss_kb = measured(label, cmd, env)
    return t, out, rss_kb


def bench_scale(args):
    symbols = args.scale_symbols
    print("\n== scale: making the year's tables (kept for the next run) ==", file=sys.stderr)
    plain_url, rows = scale_db("mdbench_scale_plain", "none", symbols)
    part_url, _ = scale_db("mdbench_scale_monthly", "monthly", symbols)
    flat = append_file(symbols, 2000)
    appended = symbols * 2000
    empty_plain = fresh_db("mdbench_scale_empty_plain")
    psql(ADMIN, 'DROP DATABASE IF EXISTS "mdbench_scale_empty_monthly" WITH (FORCE)')
    psql(ADMIN, 'CREATE DATABASE "mdbench_scale_empty_monthly"')
    empty_part = db_url("mdbench_scale_empty_monthly")
    env = dict(os.environ, MDINGEST__DATABASE__URL=empty_part, MDINGEST__DATABASE__PARTITIONING="monthly")
    subprocess.run([BIN, "--config", CONFIG, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)

    rss = []
    times = {}
    urls = [empty_plain, plain_url, empty_part, part_url]
    for names in (SCALE_NAMES, REMERGE_NAMES):
        for name, url in zip(names, urls):
            t, rss_kb = mdingest_import(f"scale: {name}", url, flat)
            times[name] = t
            rss.append(rss_kb)
    cov = {}
    for exact in (False, True):
        for layout, url in (("plain", plain_url), ("partitioned", part_url)):
            how = "--exact, from the bars" if exact else "from bar_counts"
            label = f"coverage, {symbols} x 2024, {layout}, {how}"
            t, out, rss_kb = mdingest_coverage(f"scale: {label}", url, exact)
            cov[label] = (t, out)
            rss.append(rss_kb)
            assert f'"sessions":252' in out, "coverage did not see 2024's 252 sessions"
    answers = {out for _, out in cov.values()}
    assert len(answers) == 1, "coverage from the counts and from the bars disagree"
    forget_appended(plain_url, "none")
    forget_appended(part_url, "monthly")
    drop_dbs(["mdbench_scale_empty_plain", "mdbench_scale_empty_monthly"])

    print()
    print("== scale ==")
    print(f"tables holding {rows} rows ({symbols} symbols x 262 weekdays x 390 minutes);"
          f" each merge: {appended} new rows of the same symbols (a Polygon flat file)")
    print_table(appended, "scale", SCALE_NAMES + REMERGE_NAMES)
    print(f"{'coverage report (the same answer every way)':<56} {'seconds':>8}")
    for label, (t, _) in cov.items():
        verdict = "(no target)" if "--exact" in label else "(target <= 5 s)  " + ("ok" if t <= 5 else "ABOVE TARGET")
        print(f"{label:<56} {t:>8.2f}  {verdict}")
    print()
    plain_ratio = times[SCALE_NAMES[0]] / times[SCALE_NAMES[1]]
    part_ratio = times[SCALE_NAMES[2]] / times[SCALE_NAMES[3]]
    print_checks([
        ("partitioned: full table vs empty", part_ratio, 0.8),
        ("plain: full table vs empty (no target)", plain_ratio, 0.0),
        ("partitioned full vs plain empty", times[SCALE_NAMES[0]] / times[SCALE_NAMES[3]], 0.0),
        ("re-merge, partitioned: full vs the file alone", times[REMERGE_NAMES[2]] / times[REMERGE_NAMES[3]], 0.8),
        ("re-merge, plain: full vs the file alone (no target)", times[REMERGE_NAMES[0]] / times[REMERGE_NAMES[1]], 0.0),
    ], max(rss) / 1024)
    print_cpu("scale", SCALE_NAMES + REMERGE_NAMES)
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Backfill.

SIM_KEY = "bench-sim-key-0123456789"
# backfill.rs: windows on a fixed grid counted from Sunday 1970-01-04 00:00 UTC, of the
# vendor's length (Polygon's minute windows: 30 days; Alpaca's: one week).
GRID_ORIGIN = 3 * 86_400
DAY = 86_400


def ny_midnight(day):
    """The first instant of a New York date, as epoch seconds (what --from D means)."""
    from zoneinfo import ZoneInfo
    d = datetime.strptime(day, "%Y-%m-%d")
    return int(d.replace(tzinfo=ZoneInfo("America/New_York")).timestamp())


def backfill_windows(window, date_from, date_to):
    """The grid's windows of `window` seconds overlapping [from, to] (New York dates,
    inclusive), none starting in the future, as (from_ms, to_ms inclusive), as backfill.rs plans
    and fetches them."""
    start = ny_midnight(date_from)
    end = ny_midnight((datetime.strptime(date_to, "%Y-%m-%d") + timedelta(days=1)).strftime("%Y-%m-%d"))
    now_ms = int(time.time() * 1000)
    k = (start - GRID_ORIGIN) // window
    out = []
    while True:
        s = GRID_ORIGIN + k * window
        if s >= end or s * 1000 > now_ms:
            break
        out.append((s * 1000, min((s + window) * 1000 - 1, now_ms)))
        k += 1
    return out


class Sim:
    """mdingest-sim on an ephemeral loopback port, stopped with SIGTERM."""

    def __init__(self, symbols, date_from, date_to, page_size):
        os.makedirs(OUT, exist_ok=True)
        self.log = open(os.path.join(OUT, "sim.log"), "w")
        self.proc = subprocess.Popen(
            [SIM, "--listen", "127.0.0.1:0", "--api-key", SIM_KEY, "--symbols", ",".join(symbols),
             "--from", date_from, "--to", date_to, "--page-size", str(page_size)],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline().strip()
        m = re.match(r"mdingest-sim listening on (http://127\.0\.0\.1:(\d+))$", line)
        if not m:
            self.stop()
            fail(f"mdingest-sim did not start (it said {line!r}; see bench-out/sim.log)")
        self.url, self.port = m.group(1), int(m.group(2))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def get(conn, path, headers, what):
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        fail(f"simulator: HTTP {resp.status} for {what}: {body[:200]!r}")
    return body


def stamp(epoch_ms):
    return (datetime(1970, 1, 1, tzinfo=timezone.utc)
            + timedelta(milliseconds=epoch_ms)).strftime("%Y-%m-%d %H:%M:%S+00")


class OneSymbolPerRequest:
    """A vendor whose request chain serves one symbol: a task per symbol and window."""

    def __init__(self, symbols):
        self.symbols = sorted(symbols)

    def tasks(self, windows):
        return [((s,), f, t) for f, t in windows for s in self.symbols]


class Polygon(OneSymbolPerRequest):
    """Aggregates of one symbol per request, 30-day windows, pages of up to 50,000 bars chained
    by next_url."""
    name = "polygon"
    timeframe = "minute"
    window = 30 * DAY
    page_size = 50_000
    RESULTS_COUNT = re.compile(rb'"resultsCount":(\d+)')
    NEXT_URL = b'"next_url":"'

    def pages(self, conn, task):
        """Yields each page's body of one task, following next_url."""
        (symbol,), f, t = task
        path = (f"/v2/aggs/ticker/{symbol}/range/1/minute/{f}/{t}"
                "?adjusted=false&sort=asc&limit=50000")
        headers = {"Authorization": f"Bearer {SIM_KEY}"}
        while path:
            body = get(conn, path, headers, f"{symbol} {f}..{t}")
            yield body
            i = body.rfind(self.NEXT_URL)
            path = None
            if i >= 0:
                raw = body[i + len(self.NEXT_URL):body.index(b'"', i + len(self.NEXT_URL))].decode()
                u = urlsplit(raw.replace("\\/", "/"))
                path = u.path + ("?" + u.query if u.query else "")

    def count(self, body):
        m = self.RESULTS_COUNT.search(body, 0, 200)
        return int(m.group(1)) if m else 0

    def rows(self, task, page):
        (symbol,), _, _ = task
        for b in page.get("results", ()):
            yield self.name, symbol, stamp(b["t"]), (b["o"], b["h"], b["l"], b["c"], b["v"])

    def env(self, sim):
        return dict(MDINGEST__SOURCES__POLYGON__ENABLED="true",
                    MDINGEST__SOURCES__POLYGON__API_KEY=SIM_KEY,
                    MDINGEST__SOURCES__POLYGON__REST_URL=sim.url,
                    # The simulator has no quota; config.rs validate() allows at most 100,000.
                    MDINGEST__SOURCES__POLYGON__REQUESTS_PER_MINUTE="100000",
                    MDINGEST__SOURCES__POLYGON__STREAM="false",
                    MDINGEST__SOURCES__POLYGON__SYMBOLS=",".join(self.symbols))


class Alpaca:
    """Bars of up to 100 symbols per request, one-week windows, pages of 10,000 bars across
    them chained by next_page_token."""
    name = "alpaca"
    timeframe = "minute"
    window = 7 * DAY
    page_size = 10_000
    PER_REQUEST = 100

    def __init__(self, symbols):
        self.symbols = sorted(symbols)

    def tasks(self, windows):
        groups = [tuple(self.symbols[i:i + self.PER_REQUEST])
                  for i in range(0, len(self.symbols), self.PER_REQUEST)]
        return [(g, f, t) for f, t in windows for g in groups]

    def pages(self, conn, task):
        symbols, f, t = task
        iso = lambda ms: (datetime(1970, 1, 1, tzinfo=timezone.utc)
                          + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        headers = {"APCA-API-KEY-ID": SIM_KEY, "APCA-API-SECRET-KEY": SIM_KEY}
        token = None
        while True:
            q = {"symbols": ",".join(symbols), "timeframe": "1Min", "start": iso(f), "end": iso(t),
                 "limit": "10000", "adjustment": "raw", "feed": "iex", "sort": "asc"}
            if token:
                q["page_token"] = token
            body = get(conn, "/v2/stocks/bars?" + urlencode(q), headers, f"{len(symbols)} symbols {f}..{t}")
            yield body
            i = body.rfind(b'"next_page_token":')
            rest = body[i + len(b'"next_page_token":'):].strip()
            if i < 0 or rest.startswith(b"null"):
                return
            token = rest[1:rest.index(b'"', 1)].decode()

    def count(self, body):
        return body.count(b'"t":"')

    def rows(self, task, page):
        for symbol, bars in (page.get("bars") or {}).items():
            for b in bars:
                t = datetime.strptime(b["t"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
                yield (self.name, symbol, t.strftime("%Y-%m-%d %H:%M:%S+00"),
                       (b["o"], b["h"], b["l"], b["c"], b["v"]))

    def env(self, sim):
        return dict(MDINGEST__SOURCES__ALPACA__ENABLED="true",
                    MDINGEST__SOURCES__ALPACA__KEY_ID=SIM_KEY,
                    MDINGEST__SOURCES__ALPACA__SECRET_KEY=SIM_KEY,
                    MDINGEST__SOURCES__ALPACA__REST_URL=sim.url,
                    MDINGEST__SOURCES__ALPACA__REQUESTS_PER_MINUTE="100000",
                    MDINGEST__SOURCES__ALPACA__STREAM="false",
                    MDINGEST__SOURCES__ALPACA__SYMBOLS=",".join(self.symbols))


class Yahoo(OneSymbolPerRequest):
    """Daily charts of one symbol per request, five-year windows, the whole window in one
    response; one fetch writes `yahoo` and `yahoo_adjusted`."""
    name = "yahoo"
    timeframe = "daily"
    window = 260 * 7 * DAY
    page_size = 50_000
    TIMESTAMPS = re.compile(rb'"timestamp":\[([0-9,]*)\]')

    def pages(self, conn, task):
        (symbol,), f, t = task
        # period2 is exclusive: the window's last millisecond, rounded up to a second.
        p1, p2 = f // 1000, t // 1000 + 1
        yield get(conn, f"/v8/finance/chart/{symbol}?period1={p1}&period2={p2}&interval=1d"
                        "&events=div%2Csplits&includePrePost=false", {}, f"{symbol} {f}..{t}")

    def count(self, body):
        """Yahoo's rows in the window (the trailing bar past period2 is not one)."""
        m = self.TIMESTAMPS.search(body)
        return max(0, m.group(1).count(b",")) if m else 0

    def rows(self, task, page):
        _, _, t = task
        p2 = t // 1000 + 1
        r = page["chart"]["result"][0]
        q = r["indicators"]["quote"][0]
        adj = r["indicators"].get("adjclose", [{}])[0].get("adjclose", [])
        for i, ts in enumerate(r.get("timestamp", ())):
            vals = [q[k][i] for k in ("open", "high", "low", "close", "volume")]
            if ts >= p2 or any(v is None for v in vals):
                continue
            stamp = (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=ts)).strftime("%Y-%m-%d %H:%M:%S+00")
            o, h, l, c, v = vals
            yield "yahoo", task[0][0], stamp, (o, h, l, c, v)
            if adj and adj[i] is not None:
                d = [Decimal(x) for x in (o, h, l, c, adj[i])]
                ratio = d[4] / d[3]
                q4 = lambda x: x.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
                yield ("yahoo_adjusted", task[0][0], stamp,
                       (q4(d[0] * ratio), q4(d[1] * ratio), q4(d[2] * ratio), q4(d[4]), v))

    def env(self, sim):
        return dict(MDINGEST__SOURCES__YAHOO__ENABLED="true",
                    MDINGEST__SOURCES__YAHOO__REST_URL=sim.url,
                    MDINGEST__SOURCES__YAHOO__ADJUSTED="true",
                    MDINGEST__SOURCES__YAHOO__TIMEFRAME="1d",
                    # The simulator has no quota: Yahoo's self-imposed 60 a minute, raised.
                    MDINGEST__SOURCES__YAHOO__REQUESTS_PER_MINUTE="100000",
                    MDINGEST__SOURCES__YAHOO__SYMBOLS=",".join(self.symbols))


def fetch_all(sim, vendor, tasks, threads=4):
    """Fetches every page of every task with `threads` threads, each on its own keep-alive
    connection; counts bars and bytes, stores nothing. Returns (seconds, bars, pages, bytes)."""
    q = queue.Queue()
    for t in tasks:
        q.put(t)
    totals = []
    errors = []

    def worker():
        conn = HTTPConnection("127.0.0.1", sim.port, timeout=60)
        bars = pages = size = 0
        try:
            while True:
                try:
                    task = q.get_nowait()
                except queue.Empty:
                    break
                for body in vendor.pages(conn, task):
                    bars += vendor.count(body)
                    pages += 1
                    size += len(body)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            conn.close()
        totals.append((bars, pages, size))

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    if errors:
        fail(f"simulator alone: {errors[0]!r}")
    return (seconds, sum(b for b, _, _ in totals), sum(p for _, p, _ in totals),
            sum(s for _, _, s in totals))


ONE = Decimal(1)


def table_volume(v):
    """A wire volume (`4110`, `642646396.0`, `25933.6`, `1.0471e+07`) rounded half away from
    zero, as mdingest stores it: Decimal on the magnitude, never float."""
    if isinstance(v, int):
        return v
    d = Decimal(v)
    r = int(d.copy_abs().quantize(ONE, rounding=ROUND_HALF_UP))
    return -r if d < 0 else r


def write_table_csv(sim, vendor, tasks, path):
    """Second, untimed pass: the simulator's bars as market_data rows (symbol, timestamp, open,
    high, low, close, volume, data_source), as mdingest must store them (prices keep their wire
    text: PostgreSQL rounds numeric(15,4) half away from zero, as mdingest does). Returns the
    rows written per data source."""
    import json
    conn = HTTPConnection("127.0.0.1", sim.port, timeout=60)
    by_source = {}
    with open(path + ".part", "w") as out:
        for task in tasks:
            for body in vendor.pages(conn, task):
                page = json.loads(body, parse_float=str)
                for source, symbol, ts, (o, h, l, c, v) in vendor.rows(task, page):
                    out.write(f"{symbol},{ts},{o},{h},{l},{c},{table_volume(v)},{source}\n")
                    by_source[source] = by_source.get(source, 0) + 1
    conn.close()
    os.replace(path + ".part", path)
    return by_source


def mdingest_backfill(label, url, sim, vendor, date_from, date_to, force):
    """Seconds, peak RSS in kB and mdingest's summary of one `mdingest backfill` against sim."""
    env = dict(os.environ, MDINGEST__DATABASE__URL=url, **vendor.env(sim))
    cmd = [BIN, "--config", CONFIG, "backfill", "--source", vendor.name,
           "--symbols", ",".join(vendor.symbols), "--from", date_from, "--to", date_to]
    if force:
        cmd.append("--force")
    t, out, rss_kb = measured(label, cmd, env)
    return t, rss_kb, out


def table_digest(url):
    return psql_value(url, """
SELECT md5(string_agg(concat_ws(',', symbol, extract(epoch FROM timestamp)::bigint, open, high,
                                low, close, volume, data_source), E'\\n'
                      ORDER BY symbol, timestamp, data_source))
FROM data_ingestion.market_data""")


def first_differences(url_a, url_b, n=5):
    """The first rows (sorted) in which two market_data tables differ, for a failure message."""
    sql = ("SELECT concat_ws(',', data_source, symbol, timestamp, open, high, low, close, volume) "
           "FROM data_ingestion.market_data ORDER BY data_source, symbol, timestamp")
    a = psql_value(url_a, sql).splitlines()
    b = psql_value(url_b, sql).splitlines()
    diff = [f"  mdingest {x}\n  psql     {y}" for x, y in zip(a, b) if x != y][:n]
    return "\n".join(diff) or f"  ({len(a)} rows against {len(b)})"


BACKFILL_NAMES = [
    "simulator alone (4 threads, transfer only)",
    "psql \\copy (raw, fresh table)",
    "psql staging upsert (fresh table)",
    "psql staging upsert (existing rows)",
    "mdingest backfill (fresh table)",
    "mdingest backfill --force (identical rows)",
]


def bench_backfill(vendor, date_from, date_to):
    global SIM_PID
    part = f"backfill {vendor.name}"
    windows = backfill_windows(vendor.window, date_from, date_to)
    tasks = vendor.tasks(windows)
    print(f"{part}: {len(vendor.symbols)} symbols, {date_from} to {date_to}: "
          f"{len(windows)} windows of {vendor.window // DAY} days each", file=sys.stderr)
    alone, copy, stage, stage_again, md, md_again = (f"{part}: {n}" for n in BACKFILL_NAMES)
    sim = Sim(vendor.symbols, date_from, date_to, vendor.page_size)
    SIM_PID = sim.proc.pid
    tag = vendor.name
    dbs = [f"mdbench_bf_copy_{tag}", f"mdbench_bf_psql_{tag}", f"mdbench_bf_mdingest_{tag}"]
    try:
        print(f"simulator alone: {len(tasks)} request chains with 4 threads ...", file=sys.stderr)
        res = {}
        t_alone = timed(alone, lambda: res.setdefault("r", fetch_all(sim, vendor, tasks)), None)
        t_transfer, fetched, pages, size = res["r"]
        # The transfer's own clock (threads started to all joined) is the figure.
        RUNS[alone]["seconds"] = t_transfer
        del t_alone
        if fetched < 1:
            fail("the simulator served no bars")
        print(f"simulator alone: {fetched} bars in {pages} pages ({size / 1e6:.0f} MB) in {t_transfer:.2f} s",
              file=sys.stderr)

        print("writing the same bars as a table-shaped CSV (untimed) ...", file=sys.stderr)
        table = os.path.join(OUT, f"backfill_table_rows_{tag}.csv")
        by_source = write_table_csv(sim, vendor, tasks, table)
        # Rows stored (of every source the fetch writes), and the vendor's rows refused.
        rows = sum(by_source.values())
        refused = fetched - by_source.get(vendor.name, 0)
        if vendor.name != "yahoo" and (rows != fetched or refused != 0):
            fail(f"the CSV pass got {rows} bars, the timed pass {fetched}")
        print("psql \\copy into a fresh table ...", file=sys.stderr)
        url_copy = fresh_db(dbs[0])
        t_copy = psql_copy(copy, url_copy, table)
        if count(url_copy) != rows:
            fail(f"psql \\copy loaded {count(url_copy)} rows, expected {rows}")

        print("psql staging upsert into a fresh table, then again over the existing rows ...", file=sys.stderr)
        url = fresh_db(dbs[1])
        t_stage = psql_staging_upsert(stage, url, table)
        t_stage_again = psql_staging_upsert(stage_again, url, table)
        if count(url) != rows:
            fail(f"psql staging upsert left {count(url)} rows, expected {rows}")
        drop_dbs([dbs[1]])

        print("mdingest backfill into a fresh database, then again with --force ...", file=sys.stderr)
        url = fresh_db(dbs[2])
        span = (date_from, date_to)
        t_md, rss_kb, out = mdingest_backfill(md, url, sim, vendor, *span, force=False)
        n = count(url)
        if n != rows:
            fail(f"after the backfill market_data holds {n} rows; the simulator served {rows}\n{out}")
        s = summary_counts(out)
        if s.get("inserted") != rows or s.get("rejected") != refused:
            fail(f"the fresh backfill's summary is not {rows} inserted, {refused} rejected:\n{out}")
        t_md_again, rss2_kb, out = mdingest_backfill(md_again, url, sim, vendor, *span, force=True)
        n = count(url)
        if n != rows:
            fail(f"after the re-backfill market_data holds {n} rows; expected {rows}\n{out}")
        s = summary_counts(out)
        if s.get("fetched") != fetched or s.get("unchanged") != rows:
            fail(f"the re-backfill's summary is not {fetched} fetched, {rows} unchanged:\n{out}")
        # The psql contenders loaded the very same rows, value for value.
        if table_digest(url) != table_digest(url_copy):
            fail("market_data after the backfill differs from the CSV the psql baselines loaded:\n"
                 + first_differences(url, url_copy))
    finally:
        sim.stop()
        SIM_PID = None
        drop_dbs(dbs)

    rss_mb = max(rss_kb, rss2_kb) / 1024
    print()
    print(f"== {part} ==")
    sources = ", ".join(f"{k} {v}" for k, v in sorted(by_source.items()))
    print(f"rows: {rows} ({sources}; {vendor.timeframe} bars of {len(vendor.symbols)} symbols, "
          f"{date_from} to {date_to}; {fetched} vendor bars in {pages} pages of up to "
          f"{vendor.page_size} bars, {size / pages / 1e6:.2f} MB each on average; "
          f"{len(windows)} windows)")
    print_table(rows, part, BACKFILL_NAMES)
    print_checks([
        (f"{vendor.name} backfill vs psql staging upsert", t_stage / t_md, 1.0),
        (f"{vendor.name} backfill vs raw psql \\copy", t_copy / t_md, 0.8),
        (f"{vendor.name} re-backfill vs psql staging upsert (existing)", t_stage_again / t_md_again, 2.0),
    ], rss_mb)
    print_cpu(part, BACKFILL_NAMES)
    print(f"simulator alone: {fetched / t_transfer:.0f} bars/s ({size / 1e6 / t_transfer:.0f} MB/s of JSON); "
          f"the fresh backfill takes {t_md / t_transfer:.1f}x its time")


# ---------------------------------------------------------------------------------------------
# The stream: `mdingest run` on the simulator's WebSocket at a fixed rate.

def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_stream(args):
    """`mdingest run` against mdingest-sim's stream replaying minute bars of many symbols at a
    fixed total rate. Receipt-to-commit lag is what each committed batch logs (target
    mdingest::lag): the age of its OLDEST row when its transaction committed, so the percentiles
    are of each batch's worst bar, an upper bound for its other bars."""
    symbols = [f"S{i:04d}" for i in range(args.stream_symbols)]
    per_symbol = args.stream_rate / len(symbols)
    # Both vendors at once, each on its own connection: Polygon the first half, Alpaca the rest.
    half = len(symbols) // 2
    polygon_symbols, alpaca_symbols = symbols[:half], symbols[half:]
    # Far enough back that the replay never catches up with the clock during the run.
    live_from = (datetime.now(timezone.utc) - timedelta(days=14)).strftime("%Y-%m-%d")
    url = fresh_db("mdbench_stream")
    sim_log = open(os.path.join(OUT, "sim-stream.log"), "w")
    sim = subprocess.Popen(
        [SIM, "--listen", "127.0.0.1:0", "--api-key", SIM_KEY, "--symbols", ",".join(symbols),
         "--ws-bars-per-sec", f"{per_symbol}", "--ws-live-from", live_from],
        stdout=subprocess.PIPE, stderr=sim_log, text=True)
    rest = sim.stdout.readline().strip().removeprefix("mdingest-sim listening on ")
    ws = sim.stdout.readline().strip().removeprefix("mdingest-sim stream on ")
    if not ws.startswith("ws://"):
        sim.kill()
        fail("mdingest-sim did not start its stream (see bench-out/sim-stream.log)")
    env = dict(os.environ,
               MDINGEST__DATABASE__URL=url,
               MDINGEST__SOURCES__POLYGON__ENABLED="true",
               MDINGEST__SOURCES__POLYGON__API_KEY=SIM_KEY,
               MDINGEST__SOURCES__POLYGON__REST_URL=rest,
               MDINGEST__SOURCES__POLYGON__WS_URL=ws,
               MDINGEST__SOURCES__POLYGON__SYMBOLS=",".join(polygon_symbols),
               MDINGEST__SOURCES__POLYGON__REQUESTS_PER_MINUTE="100000",
               MDINGEST__SOURCES__POLYGON__STREAM="true",
               MDINGEST__SOURCES__ALPACA__ENABLED="true",
               MDINGEST__SOURCES__ALPACA__KEY_ID=SIM_KEY,
               MDINGEST__SOURCES__ALPACA__SECRET_KEY=SIM_KEY,
               MDINGEST__SOURCES__ALPACA__REST_URL=rest,
               MDINGEST__SOURCES__ALPACA__WS_URL=ws.removesuffix("/stocks") + "/v2/iex",
               MDINGEST__SOURCES__ALPACA__SYMBOLS=",".join(alpaca_symbols),
               MDINGEST__SOURCES__ALPACA__REQUESTS_PER_MINUTE="100000",
               MDINGEST__SOURCES__ALPACA__STREAM="true",
               MDINGEST__SERVICE__GAP_FILL_LOOKBACK_SECS="60",
               # The replay is history (two weeks back): the daemon's one-day rule for streamed
               # bars would refuse it all.
               MDINGEST__SERVICE__STREAM_MAX_BAR_AGE_SECS=str(30 * 86400),
               RUST_LOG="info,mdingest::lag=debug")
    err_path = os.path.join(OUT, "run-stream.log")
    print(f"stream: {len(symbols)} symbols ({half} on Polygon's stream, {len(symbols) - half} on "
          f"Alpaca's) at {per_symbol:g} bars/s each ({args.stream_rate} bars/s) for "
          f"{args.stream_secs} s after a 5 s start ...")
    with open(err_path, "w") as err:
        run = subprocess.Popen([BIN, "--config", CONFIG, "run"], env=env,
                               stdout=subprocess.DEVNULL, stderr=err)
        peak, t0 = 0, time.monotonic()
        counts = {}
        while run.poll() is None:
            peak = max(peak, vm_hwm_kb(run.pid))
            t = time.monotonic() - t0
            if "start" not in counts and t >= 5:
                counts["start"] = (time.monotonic(), count(url))
            if t >= 5 + args.stream_secs:
                counts["end"] = (time.monotonic(), count(url))
                run.send_signal(signal.SIGTERM)
                break
            time.sleep(0.01)
        while run.poll() is None:
            peak = max(peak, vm_hwm_kb(run.pid))
            time.sleep(0.01)
    sim.send_signal(signal.SIGTERM)
    sim.wait(10)
    if run.returncode != 0:
        fail(f"mdingest run exited {run.returncode}: {tail(err_path)}")
    lags = []
    with open(err_path) as f:
        for line in f:
            m = re.search(r"lag_us=(\d+)", line)
            if m and "batch committed" in line:
                lags.append(int(m.group(1)) / 1000)
    (ta, ca), (tb, cb) = counts["start"], counts["end"]
    rate = (cb - ca) / (tb - ta)
    max_age = 250
    p99 = percentile(lags, 0.99)
    print("\n== stream ==")
    rows = psql_value(url, "SELECT data_source, count(*) FROM data_ingestion.market_data GROUP BY 1 ORDER BY 1")
    stored = dict(line.split("|") for line in rows.splitlines() if line)
    print(f"batches committed: {len(lags)}; rows stored: {count(url)} "
          f"({', '.join(f'{k} {v}' for k, v in stored.items())})")
    if set(stored) != {"polygon", "alpaca"}:
        fail(f"both vendors' bars should have landed; stored: {stored}")
    print(f"sustained            {rate:10.0f} bars/s committed (offered {args.stream_rate})")
    print(f"lag p50              {percentile(lags, 0.5):10.1f} ms")
    print(f"lag p99              {p99:10.1f} ms  (target <= batch_max_age_ms + 100 = {max_age + 100} ms)"
          f"  {'ok' if p99 <= max_age + 100 else 'MISSED'}")
    print(f"lag max              {max(lags):10.1f} ms")
    print(f"mdingest peak RSS    {peak / 1024:10.1f} MB (target <= 64 MB)  {'ok' if peak <= 64 * 1024 else 'MISSED'}")
    drop_dbs(["mdbench_stream"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--symbols", type=int, default=1000, help="import: symbols in the flat file")
    ap.add_argument("--rows-per-symbol", type=int, default=1000, help="import: minutes per symbol")
    ap.add_argument("--backfill-symbols", default="AAPL,AMZN,GOOGL,JPM,META,MSFT,NVDA,TSLA,V,XOM",
                    help="backfill: tickers the simulator serves (comma-separated)")
    ap.add_argument("--backfill-from", default="2024-01-01", help="backfill: first New York date")
    ap.add_argument("--backfill-to", default="2024-12-31", help="backfill: last New York date (inclusive)")
    ap.add_argument("--skip-import", action="store_true", help="skip the import benchmark")
    ap.add_argument("--skip-backfill", action="store_true", help="skip Polygon's backfill benchmark")
    ap.add_argument("--skip-alpaca", action="store_true", help="skip Alpaca's backfill benchmark")
    ap.add_argument("--skip-yahoo", action="store_true", help="skip Yahoo's backfill benchmark")
    ap.add_argument("--yahoo-symbols", type=int, default=500, help="yahoo: symbols (Y000, Y001, ...)")
    ap.add_argument("--yahoo-from", default="2015-01-01", help="yahoo: first New York date")
    ap.add_argument("--yahoo-to", default="2024-12-31", help="yahoo: last New York date (inclusive)")
    ap.add_argument("--alpaca-symbols", type=int, default=100, help="alpaca: symbols (A000, A001, ...)")
    ap.add_argument("--alpaca-from", default="2024-01-02", help="alpaca: first New York date")
    ap.add_argument("--alpaca-to", default="2024-02-07", help="alpaca: last New York date (inclusive)")
    ap.add_argument("--skip-stream", action="store_true", help="skip the stream benchmark")
    ap.add_argument("--skip-scale", action="store_true",
                    help="skip the scale benchmark (a year of minute bars, plain and partitioned)")
    ap.add_argument("--scale-symbols", type=int, default=500,
                    help="scale: symbols with a year of minute bars (500: about 51 million rows)")
    ap.add_argument("--stream-symbols", type=int, default=1000, help="stream: symbols")
    ap.add_argument("--stream-rate", type=int, default=50000, help="stream: bars/s in all")
    ap.add_argument("--stream-secs", type=int, default=20, help="stream: seconds measured")
    args = ap.parse_args()
    if (args.skip_import and args.skip_backfill and args.skip_alpaca and args.skip_yahoo
            and args.skip_stream and args.skip_scale):
        ap.error("every part skipped: nothing to run")
    os.makedirs(OUT, exist_ok=True)
    build = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                           capture_output=True, text=True).stdout.strip()
    # scripts/bench builds target/release from this checkout just before.
    print(f"checkout {build or '(not a git checkout)'}; {os.cpu_count()} CPUs; "
          f"PostgreSQL {psql_value(ADMIN, 'SHOW server_version')}")
    if not args.skip_import:
        bench_import(args)
    if not args.skip_backfill:
        symbols = [s for s in args.backfill_symbols.split(",") if s]
        bench_backfill(Polygon(symbols), args.backfill_from, args.backfill_to)
    if not args.skip_alpaca:
        symbols = [f"A{i:03d}" for i in range(args.alpaca_symbols)]
        bench_backfill(Alpaca(symbols), args.alpaca_from, args.alpaca_to)
    if not args.skip_yahoo:
        symbols = [f"Y{i:03d}" for i in range(args.yahoo_symbols)]
        bench_backfill(Yahoo(symbols), args.yahoo_from, args.yahoo_to)
    if not args.skip_stream:
        bench_stream(args)
    if not args.skip_scale:
        bench_scale(args)
    for w in BUSY_WARNINGS:
        print(f"warning: {w}: that figure is pessimistic", file=sys.stderr)


if __name__ == "__main__":
    main()
