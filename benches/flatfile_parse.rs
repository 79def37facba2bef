//! Flat-file parsing throughput: `FlatFile` (CSV → checked `Bar`s with `Decimal` prices) against
//! the floor of merely splitting the same CSV into records, measured in the same run.
//!
//! `cargo bench --bench flatfile_parse`. The end-to-end import benchmark is `scripts/bench`.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use mdingest::domain::Timeframe;
use mdingest::sources::polygon::flatfile::FlatFile;

const SYMBOLS: i64 = 200;
const MINUTES: i64 = 1000;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("minute_aggs.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(
        f,
        "ticker,volume,open,close,high,low,window_start,transactions"
    )
    .unwrap();
    for s in 0..SYMBOLS {
        for m in 0..MINUTES {
            let ns = (1_704_186_000 + 60 * m) * 1_000_000_000;
            writeln!(
                f,
                "S{s:04},{},{}.1234,{}.2345,{}.5,{}.0001,{ns},17",
                100 + m,
                20 + s,
                20 + s,
                20 + s,
                20 + s
            )
            .unwrap();
        }
    }
    f.flush().unwrap();
    drop(f);
    let rows = (SYMBOLS * MINUTES) as f64;

    let best = |mut run: Box<dyn FnMut() -> usize>| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let n = run();
                assert_eq!(n as f64, rows);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let p = path.clone();
    let split = best(Box::new(move || {
        let mut rdr = csv::Reader::from_path(&p).unwrap();
        let mut rec = csv::StringRecord::new();
        let mut n = 0;
        while rdr.read_record(&mut rec).unwrap() {
            n += 1;
        }
        n
    }));
    let p = path.clone();
    let parse = best(Box::new(move || {
        let mut file = FlatFile::open(&p, Timeframe::M1, Arc::default()).unwrap();
        let mut n = 0;
        while let Some(chunk) = file.next_chunk(4096).unwrap() {
            assert!(chunk.rejections.is_empty());
            n += chunk.bars.len();
        }
        n
    }));
    println!("rows: {rows}");
    println!("csv split only     {:>10.0} rows/s", rows / split);
    println!("FlatFile parse     {:>10.0} rows/s", rows / parse);
    println!("parse / split      {:>10.2}x the time", parse / split);
}
