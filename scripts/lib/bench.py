"""The import benchmark (run through scripts/bench, which provisions and builds first).

Each contender loads the same rows into a fresh, identical `data_ingestion.market_data` (made by
`mdingest migrate`), all in this one run, so the ratios compare like with like on this machine:

  mdingest import          the flat file (window_start in ns), COPY-merge pipeline
  psql \\copy               raw COPY of the same rows, already in the table's shape
  psql staging upsert      \\copy into a temp table, then INSERT ... ON CONFLICT DO UPDATE
  (again over existing rows: mdingest re-import vs the same psql staging upsert)
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "mdingest")
OUT = os.path.join(ROOT, "bench-out")
os.environ["PGOPTIONS"] = "-c client_min_messages=warning"
ADMIN = os.environ.get("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def db_url(name):
    return ADMIN.rsplit("/", 1)[0] + "/" + name


def psql(url, sql, stdin=None):
    subprocess.run(["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                   check=True, stdout=subprocess.DEVNULL, stdin=stdin)


def psql_script(url, script):
    subprocess.run(["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=script.encode(),
                   check=True, stdout=subprocess.DEVNULL)


def fresh_db(name):
    psql(ADMIN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    psql(ADMIN, f'CREATE DATABASE "{name}"')
    env = dict(os.environ, MDINGEST__DATABASE__URL=db_url(name))
    subprocess.run([BIN, "--config", os.path.join(ROOT, "config", "mdingest.toml"), "migrate"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return db_url(name)


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


def timed(fn):
    # Every contender starts without the previous one's dirty pages and WAL to write out.
    psql(ADMIN, "CHECKPOINT")
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def mdingest_import(url, flat):
    """Seconds and peak RSS in kB (GNU time when installed, else getrusage of children)."""
    env = dict(os.environ, MDINGEST__DATABASE__URL=url)
    cmd = [BIN, "--config", os.path.join(ROOT, "config", "mdingest.toml"),
           "import", "--format", "polygon-flatfile", flat]
    rss_file = os.path.join(OUT, "rss.txt")
    gnu_time = shutil.which("time") or (os.path.exists("/usr/bin/time") and "/usr/bin/time")
    if gnu_time:
        cmd = [gnu_time, "-f", "%M", "-o", rss_file] + cmd
    t = timed(lambda: subprocess.run(cmd, env=env, check=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if gnu_time:
        with open(rss_file) as f:
            return t, int(f.read().split()[-1])
    return t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


COLS = "(symbol, timestamp, open, high, low, close, volume, data_source)"


def psql_copy(url, table):
    return timed(lambda: psql_script(url, f"\\copy data_ingestion.market_data {COLS} FROM '{table}' WITH (FORMAT csv)\n"))


def psql_staging_upsert(url, table):
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
    return timed(lambda: psql_script(url, script))


def count(url):
    out = subprocess.run(["psql", url, "-XtAc", "SELECT count(*) FROM data_ingestion.market_data"],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=1000)
    ap.add_argument("--rows-per-symbol", type=int, default=1000)
    args = ap.parse_args()
    rows = args.symbols * args.rows_per_symbol
    print(f"generating {rows} minute bars ({args.symbols} symbols x {args.rows_per_symbol} minutes)", file=sys.stderr)
    flat, table = generate(args.symbols, args.rows_per_symbol)

    print("psql \\copy into a fresh table ...", file=sys.stderr)
    url = fresh_db("mdbench_copy")
    t_copy = psql_copy(url, table)
    assert count(url) == rows

    print("psql staging upsert into a fresh table, then again over the existing rows ...", file=sys.stderr)
    url = fresh_db("mdbench_psql")
    t_stage = psql_staging_upsert(url, table)
    t_stage_again = psql_staging_upsert(url, table)
    assert count(url) == rows

    print("mdingest import into a fresh database, then the identical file again ...", file=sys.stderr)
    url = fresh_db("mdbench_mdingest")
    t_md, rss_kb = mdingest_import(url, flat)
    assert count(url) == rows, "mdingest did not load every row"
    t_md_again, rss2_kb = mdingest_import(url, flat)
    rss_mb = max(rss_kb, rss2_kb) / 1024

    rate = lambda t: rows / t
    print()
    print(f"rows: {rows}")
    print(f"{'contender':<42} {'seconds':>8} {'rows/s':>10}")
    for name, t in [
        ("psql \\copy (raw, fresh table)", t_copy),
        ("psql staging upsert (fresh table)", t_stage),
        ("psql staging upsert (existing rows)", t_stage_again),
        ("mdingest import (fresh table)", t_md),
        ("mdingest import (identical re-import)", t_md_again),
    ]:
        print(f"{name:<42} {t:>8.2f} {rate(t):>10.0f}")
    print()
    checks = [
        ("import vs psql staging upsert", t_stage / t_md, 1.0),
        ("import vs raw psql \\copy", t_copy / t_md, 0.8),
        ("re-import vs psql staging upsert (existing)", t_stage_again / t_md_again, 2.0),
    ]
    for name, ratio, target in checks:
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        print(f"{name:<46} {ratio:5.2f}x  (target >= {target}x)  {verdict}")
    verdict = "ok" if rss_mb <= 64 else "ABOVE TARGET"
    print(f"{'mdingest peak RSS':<46} {rss_mb:5.1f} MB (target <= 64 MB)  {verdict}")
    for name in ["mdbench_copy", "mdbench_psql", "mdbench_mdingest"]:
        psql(ADMIN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
