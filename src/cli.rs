//! The command line: parse, load config, dispatch, and map every failure to one line on stderr
//! and a non-zero exit code (no panics, no backtraces for user errors).

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::backfill::{self, BackfillOptions, DateArg};
use crate::config::{self, Config};
use crate::db;
use crate::domain::{DataSource, Symbol, Timeframe};
use crate::import;
use crate::shutdown::Shutdown;
use crate::sources::driver::Summary;

#[derive(Debug, Parser)]
#[command(
    name = "mdingest",
    version,
    about = "Market-data ingestion into PostgreSQL"
)]
pub struct Cli {
    /// Configuration file (TOML); every key can be overridden by MDINGEST__SECTION__KEY.
    #[arg(long, global = true, env = "MDINGEST_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database objects (idempotent; safe to run concurrently).
    Migrate {
        /// Convert a plain market_data into monthly partitions while writers go on: copies
        /// symbol by symbol with progress (a stopped run goes on where it stopped), then swaps
        /// the tables, keeping the plain one as market_data_unpartitioned.
        #[arg(long)]
        to_partitioned: bool,
    },
    /// Bulk-load vendor files.
    Import {
        #[arg(long, value_enum)]
        format: ImportFormat,
        /// Files to load (CSV or CSV.gz).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Print the summary as one JSON object on stdout (same exit codes).
        #[arg(long)]
        json: bool,
    },
    /// Historical load from a vendor's REST API, then exit. Work is planned as tasks in
    /// data_ingestion.backfill_tasks: a re-run fetches only what is left, and several processes
    /// share one range.
    Backfill {
        #[command(flatten)]
        select: Selection,
        /// Must match the source's configured timeframe.
        #[arg(long, value_parser = parse_timeframe)]
        timeframe: Option<Timeframe>,
        /// Fetch windows again that are already done (to pick up a vendor's corrections).
        #[arg(long)]
        force: bool,
        /// Fetch only the sessions `coverage` reports as holes for these selectors, one task
        /// per session; a session fetched before is not fetched again (unless --force).
        #[arg(long)]
        holes: bool,
        /// With --holes: a session holding bars but filled below this percentage is a hole too.
        #[arg(long, requires = "holes", value_name = "PERCENT", value_parser = parse_percent)]
        hole_below: Option<f64>,
        /// Print the summary as one JSON object on stdout (same exit codes).
        #[arg(long)]
        json: bool,
    },
    /// The daemon: streams every enabled source that streams (gap-filling through REST on
    /// start and after every reconnect) and polls those that do not (Yahoo), until
    /// SIGTERM/SIGINT.
    Run,
    /// Each symbol's bars held against those the NYSE's sessions call for (holidays and 13:00
    /// early closes included) on the source's timeframe: missing and sparse sessions, and the
    /// holes as ranges, longest first.
    Coverage {
        #[command(flatten)]
        select: Selection,
        /// A session holding bars but filled below this percentage counts as a hole too
        /// (default 0: only sessions without a bar are holes).
        #[arg(long, default_value_t = 0.0, value_name = "PERCENT", value_parser = parse_percent)]
        hole_below: f64,
        /// Count the bars themselves instead of reading data_ingestion.bar_counts (kept by
        /// triggers on market_data): a scan of the range, and right even after a partition was
        /// dropped, detached or truncated by hand, which no trigger sees.
        #[arg(long)]
        exact: bool,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print every feed's ingestion status (state, last bar and its lag, last error).
    Status {
        /// One JSON array of feeds instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and print it resolved, secrets redacted.
    CheckConfig,
}

/// What `backfill` and `coverage` work on.
#[derive(Debug, clap::Args)]
pub struct Selection {
    /// The data source: polygon, alpaca, yahoo or yahoo_adjusted (Yahoo's one fetch writes
    /// both of its sources).
    #[arg(long, value_parser = parse_source)]
    source: DataSource,
    /// Symbols, comma-separated (default: backfill, the source's configured symbols; coverage,
    /// every symbol holding a bar of the source in the range).
    #[arg(long, value_delimiter = ',', value_parser = parse_symbol)]
    symbols: Vec<Symbol>,
    /// First day (New York exchange date, inclusive; also today, yesterday or today-7d), or
    /// for a backfill without --holes an RFC 3339 time.
    #[arg(long, value_parser = parse_date)]
    from: DateArg,
    /// Last day (inclusive; also today or yesterday), or for a backfill without --holes an
    /// RFC 3339 time.
    #[arg(long, value_parser = parse_date)]
    to: DateArg,
}

fn parse_source(s: &str) -> Result<DataSource, String> {
    s.parse()
        .map_err(|e: crate::domain::DomainError| e.to_string())
}

fn parse_symbol(s: &str) -> Result<Symbol, String> {
    s.trim()
        .parse()
        .map_err(|e: crate::domain::DomainError| e.to_string())
}

fn parse_timeframe(s: &str) -> Result<Timeframe, String> {
    s.parse()
        .map_err(|e: crate::domain::DomainError| e.to_string())
}

fn parse_date(s: &str) -> Result<DateArg, String> {
    s.parse()
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "\"{}\" is not a percentage from 0 to 100",
            crate::text::excerpt(s, 20)
        )),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportFormat {
    /// Polygon flat files: day or minute aggregates.
    PolygonFlatfile,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            error_line(&crate::text::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Writes the command's output. A reader that went away (`| head -1`) is not an error: the
/// output is simply no longer wanted, as for any Unix tool.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

/// `mdingest: error: …` on stderr, one line; a closed stderr is ignored.
pub fn error_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "mdingest: error: {text}");
}

/// `mdingest: warning: …` on stderr, one line; a closed stderr is ignored.
pub fn warn_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "mdingest: warning: {text}");
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = config::resolve_path(cli.config);
    let cfg = Config::load(&path)?;
    crate::logging::init(&cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli.command, cfg))
}

async fn dispatch(command: Command, cfg: Config) -> anyhow::Result<ExitCode> {
    if matches!(
        command,
        Command::CheckConfig | Command::Run | Command::Backfill { .. }
    ) {
        cfg.check_credentials()?;
        // An enabled source this build cannot run, or whose section cannot be used, is named
        // now, not skipped.
        crate::sources::enabled(&cfg)?;
    }
    match command {
        Command::CheckConfig => {
            out(&cfg.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            to_partitioned: true,
        } => {
            let shutdown = listening()?;
            let pg = db::parse_url(cfg.database.url.expose())?;
            let mut client = db::connect(&pg, &cfg.database.url.redacted()).await?;
            db::migrate::check_current(&client).await?;
            let done = db::convert::to_partitioned(&mut client, &shutdown, true).await?;
            if done.already {
                out("market_data is partitioned already: nothing to do\n");
                return Ok(ExitCode::SUCCESS);
            }
            out(&format!(
                "copied {} rows of {} symbols ({} symbols in all)\n",
                done.rows_copied, done.symbols_copied, done.symbols_total
            ));
            if done.interrupted {
                let signal = shutdown.signal().map_or(1, |s| s.exit_code());
                error_line(
                    "interrupted before the swap: run `mdingest migrate --to-partitioned` again to go on where it stopped",
                );
                return Ok(ExitCode::from(signal));
            }
            out(&format!(
                "market_data is partitioned by month; the plain table is kept as data_ingestion.{}: drop it once satisfied\n",
                db::convert::KEPT
            ));
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            to_partitioned: false,
        } => {
            let report =
                db::migrate::migrate_with(cfg.database.url.expose(), cfg.database.partitioning)
                    .await?;
            if report.created_database {
                out("created database\n");
            }
            if report.applied.is_empty() {
                out("schema data_ingestion is up to date\n");
            }
            for m in &report.applied {
                out(&format!("applied {m}\n"));
            }
            for n in &report.notes {
                out(&format!("{n}\n"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let pg = db::parse_url(cfg.database.url.expose())?;
            let client = db::connect(&pg, &cfg.database.url.redacted()).await?;
            db::migrate::check_current(&client).await?;
            let rows = db::status::read_all(&client)
                .await
                .context("cannot read data_ingestion.ingestion_status")?;
            let now = chrono::Utc::now();
            if json {
                out(&format!("{}\n", db::status::render_json(&rows, now)));
            } else {
                out(&db::status::render_table(&rows, now));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Coverage {
            select,
            hole_below,
            exact,
            json,
        } => {
            let (DateArg::Date(from), DateArg::Date(to)) = (select.from, select.to) else {
                anyhow::bail!(
                    "coverage: --from and --to are exchange dates (2024-01-02), not times"
                );
            };
            let pg = db::parse_url(cfg.database.url.expose())?;
            let client = db::connect(&pg, &cfg.database.url.redacted()).await?;
            db::migrate::check_current(&client).await?;
            let opts = crate::coverage::CoverageOptions {
                source: select.source,
                timeframe: cfg.timeframes().of(select.source),
                symbols: select.symbols,
                from,
                to,
                hole_below,
                exact,
            };
            let report = crate::coverage::report(&client, &opts).await?;
            if json {
                out(&format!("{}\n", report.to_json()));
            } else {
                out(&report.render_table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            format: ImportFormat::PolygonFlatfile,
            paths,
            json,
        } => {
            let shutdown = listening()?;
            let summary = import::import(&cfg, paths, &shutdown, !json).await?;
            Ok(finish(&summary, json))
        }
        Command::Run => {
            let shutdown = listening()?;
            match crate::run::run(&cfg, &shutdown).await? {
                Some(summary) => {
                    for w in &summary.warnings {
                        warn_line(w);
                    }
                    out(&summary.to_string());
                    for f in &summary.failed {
                        error_line(f);
                    }
                    if let Some(n) = summary.not_committed {
                        error_line(&format!(
                            "run: {n} bars received were not committed within shutdown_timeout_secs; the next start gap-fills them"
                        ));
                    }
                    Ok(ExitCode::from(crate::run::exit_code(&summary)))
                }
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Backfill {
            select:
                Selection {
                    source,
                    symbols,
                    from,
                    to,
                },
            timeframe,
            force,
            holes,
            hole_below,
            json,
        } => {
            let shutdown = listening()?;
            let opts = BackfillOptions {
                source,
                symbols,
                from,
                to,
                timeframe,
                force,
                holes: holes.then_some(hole_below.unwrap_or(0.0)),
            };
            let summary = backfill::backfill(&cfg, opts, &shutdown, !json).await?;
            Ok(finish(&summary, json))
        }
    }
}

/// The shutdown of a long command, listening for SIGINT and SIGTERM.
fn listening() -> anyhow::Result<Shutdown> {
    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .context("cannot listen for signals")?;
    Ok(shutdown)
}

/// Prints the summary (as text, or as one JSON object for schedulers) and the lines that
/// explain a non-zero exit; returns the exit code.
fn finish(summary: &Summary, json: bool) -> ExitCode {
    for w in &summary.warnings {
        warn_line(w);
    }
    if json {
        out(&format!("{}\n", summary.to_json()));
    } else {
        out(&summary.to_string());
    }
    for f in &summary.failed {
        error_line(f);
    }
    match (summary.not_committed, summary.interrupted) {
        (Some(n), _) => error_line(&format!(
            "{}: gave up: {n} bars read were not committed",
            summary.what
        )),
        (None, Some(s)) => error_line(&format!(
            "{} interrupted by {}; everything read is committed",
            summary.what,
            s.name()
        )),
        (None, None) => {}
    }
    ExitCode::from(summary.exit_code())
}
