//! `mdingest-sim`: serves the deterministic vendor simulator (`mdingest::sim`) on a loopback
//! port (Polygon's aggregates, Alpaca's bars and Yahoo's chart), and the vendors' WebSocket streams on a second
//! one (Polygon's at `/stocks`, Alpaca's at `/v2/iex`), until SIGINT or SIGTERM. Alpaca's two
//! key headers both carry `--api-key`.
//!
//! Stdout holds exactly two lines, `mdingest-sim listening on http://127.0.0.1:PORT` then
//! `mdingest-sim stream on ws://127.0.0.1:PORT/stocks`, so a script or test can start it on port
//! 0 and read both addresses back.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::America::New_York;
use clap::error::ErrorKind;
use clap::Parser;
use mdingest::domain::Symbol;
use mdingest::sim::{Fault, SimConfig, Simulator, SymbolFault, WsConfig, WsFault, YahooAction};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(
    name = "mdingest-sim",
    version,
    about = "Deterministic Polygon, Alpaca and Yahoo REST and WebSocket stream simulator (loopback only)",
    after_help = "Requests are logged at debug level to stderr: RUST_LOG=debug mdingest-sim"
)]
struct Args {
    /// Address to bind; must be loopback. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    listen: SocketAddr,
    /// The key clients must send as `Authorization: Bearer KEY`.
    #[arg(
        long,
        env = "SIM_API_KEY",
        default_value = "sim-key",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: String,
    /// Known tickers, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "AAPL,MSFT",
        value_name = "SYMBOLS"
    )]
    symbols: Vec<String>,
    /// First day with data (YYYY-MM-DD in New York, or RFC 3339).
    #[arg(long, value_name = "DATE", value_parser = parse_from)]
    from: Option<DateTime<Utc>>,
    /// Last day with data (YYYY-MM-DD in New York, inclusive, or RFC 3339).
    #[arg(long, value_name = "DATE", value_parser = parse_to)]
    to: Option<DateTime<Utc>>,
    /// Most bars per page, whatever the request's limit.
    #[arg(long, default_value_t = 50_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=50_000))]
    page_size: u32,
    /// Delay before every response, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency_ms: u64,
    /// A fault for the next request, repeatable, consumed in order: none, 429[:SECS], 500, 401,
    /// truncate, reset, slow:MS.
    #[arg(long = "fault", value_name = "FAULT")]
    faults: Vec<Fault>,
    /// A standing answer for one ticker, repeatable: SYMBOL=404, 403, 429, 500, inconsistent, seconds, endless, echo-key, padded or oversized.
    #[arg(long = "symbol-fault", value_name = "SYMBOL=CODE", value_parser = parse_symbol_fault)]
    symbol_faults: Vec<(String, SymbolFault)>,
    /// Yahoo: a split or dividend of a ticker, repeatable: SYMBOL=split:YYYY-MM-DD:N:D or
    /// SYMBOL=dividend:YYYY-MM-DD:AMOUNT. Yahoo's history is restated for it.
    #[arg(long = "yahoo-action", value_name = "SYMBOL=ACTION", value_parser = mdingest::sim::parse_yahoo_action)]
    yahoo_actions: Vec<(String, YahooAction)>,
    /// Stream: port on --listen's address (0 picks a free one).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    ws_port: u16,
    /// Stream: replay pace, in bars per second for each subscribed symbol; once the replay
    /// reaches the present, bars follow the clock.
    #[arg(long, default_value_t = 20.0, value_name = "N", value_parser = parse_rate)]
    ws_bars_per_sec: f64,
    /// Stream: the first bar replayed (YYYY-MM-DD in New York, or RFC 3339); default: three
    /// hours of trading time ago.
    #[arg(long, value_name = "DATE", value_parser = parse_from)]
    ws_live_from: Option<DateTime<Utc>>,
    /// Stream: a fault for the next connection, repeatable, consumed in order: none,
    /// disconnect:N (drop after N frames), silence:N:MS (after N frames, neither send nor read
    /// for MS), auth (auth_failed), maxconn (max_connections), strays (bars never subscribed, and from 1970).
    #[arg(long = "ws-fault", value_name = "FAULT")]
    ws_faults: Vec<WsFault>,
    /// Stream: bars whose minute number is a multiple of N are sent twice, a preliminary version
    /// first, then the final one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    rebroadcast_every: Option<u64>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a number of bars per second above 0")),
    }
}

fn parse_day(s: &str, end: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date (expected YYYY-MM-DD or RFC 3339)"))?;
    let day = if end { day.succ_opt() } else { Some(day) };
    let start = day
        .and_then(|d| {
            New_York
                .from_local_datetime(&d.and_time(NaiveTime::MIN))
                .earliest()
        })
        .ok_or_else(|| format!("{s:?} is out of range"))?
        .with_timezone(&Utc);
    // An end date covers its whole day: up to the last millisecond before the next midnight.
    Ok(if end {
        start - chrono::Duration::milliseconds(1)
    } else {
        start
    })
}

fn parse_from(s: &str) -> Result<DateTime<Utc>, String> {
    parse_day(s, false)
}

fn parse_to(s: &str) -> Result<DateTime<Utc>, String> {
    parse_day(s, true)
}

fn parse_symbol_fault(s: &str) -> Result<(String, SymbolFault), String> {
    let (symbol, code) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SYMBOL=404, 403, 429, 500, inconsistent, seconds, endless, echo-key, padded or oversized"))?;
    Ok((symbol.to_string(), code.parse()?))
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("mdingest-sim: error: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message is several lines (usage, tips); the first says what is wrong.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            return usage_error(first.strip_prefix("error: ").unwrap_or(first));
        }
    };
    for s in &args.symbols {
        if let Err(e) = s.parse::<Symbol>() {
            return usage_error(&format!("--symbols: {e}"));
        }
    }
    if let (Some(from), Some(to)) = (args.from, args.to) {
        if from > to {
            return usage_error("--from is after --to");
        }
    }
    if !args.listen.ip().is_loopback() {
        return usage_error(&format!(
            "--listen {}: not a loopback address (the simulator serves a known key)",
            args.listen
        ));
    }

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();

    let listen = args.listen;
    let cfg = SimConfig {
        api_key: args.api_key,
        symbols: args.symbols,
        data_from: args.from,
        data_to: args.to,
        page_size: args.page_size as usize,
        latency: Duration::from_millis(args.latency_ms),
        faults: args.faults,
        symbol_faults: args.symbol_faults.into_iter().collect::<HashMap<_, _>>(),
        yahoo_actions: args
            .yahoo_actions
            .into_iter()
            .fold(HashMap::new(), |mut m, (sym, a)| {
                m.entry(sym).or_insert_with(Vec::new).push(a);
                m
            }),
        ws: WsConfig {
            live_from: args.ws_live_from,
            bars_per_sec: args.ws_bars_per_sec,
            rebroadcast_every: args.rebroadcast_every,
            faults: args.ws_faults,
            port: args.ws_port,
            // Nothing can read the record in a separate process, and a long benchmark would
            // grow it by 800 KB a second.
            record_bars: false,
            ..WsConfig::default()
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mdingest-sim: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cfg, listen))
}

async fn run(cfg: SimConfig, listen: SocketAddr) -> ExitCode {
    // Listen for signals before announcing the port: a supervisor that signals as soon as it
    // reads the line must get a clean exit, not the default action.
    let (mut term, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("mdingest-sim: error: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ws_port = cfg.ws.port;
    let sim = match Simulator::start_on(cfg, listen).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!(
                "mdingest-sim: error: cannot listen on {listen} (stream port {ws_port}): {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout is the reader's business; the server still serves.
    let _ = writeln!(out, "mdingest-sim listening on {}", sim.base_url());
    let _ = writeln!(out, "mdingest-sim stream on {}", sim.ws_url());
    let _ = out.flush();
    drop(out);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
    }
    sim.stop().await;
    ExitCode::SUCCESS
}
