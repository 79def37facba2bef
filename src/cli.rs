//! The command line: parse, load config, dispatch, and map every failure to one line on stderr
//! and a non-zero exit code (no panics, no backtraces for user errors).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, LogFormat};
use crate::db;
use crate::import::{self, ImportOptions};

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
    Migrate,
    /// Bulk-load vendor files.
    Import {
        #[arg(long, value_enum)]
        format: ImportFormat,
        /// Files to load (CSV or CSV.gz).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print every feed's ingestion status as a table.
    Status,
    /// Validate the configuration and print it resolved, secrets redacted.
    CheckConfig,
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
            eprintln!("mdingest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = config::resolve_path(cli.config);
    let cfg = Config::load(&path)?;
    init_logging(&cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli.command, cfg))
}

async fn dispatch(command: Command, cfg: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig => {
            print!("{}", cfg.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let report = db::migrate::migrate(cfg.database.url.expose()).await?;
            if report.created_database {
                println!("created database");
            }
            if report.applied.is_empty() {
                println!("schema data_ingestion is up to date");
            }
            for m in &report.applied {
                println!("applied {m}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let pg = db::parse_url(cfg.database.url.expose())?;
            let client = db::connect(&pg, &cfg.database.url.redacted()).await?;
            let rows = db::status::read_all(&client)
                .await
                .context("cannot read data_ingestion.ingestion_status (run `mdingest migrate`?)")?;
            print!("{}", db::status::render_table(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            format: ImportFormat::PolygonFlatfile,
            paths,
        } => {
            let stop = CancellationToken::new();
            let abandon = CancellationToken::new();
            let (on_stop, on_abandon) = (stop.clone(), abandon.clone());
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::warn!(
                        "interrupted: committing what was read (Ctrl-C again to give up)"
                    );
                    on_stop.cancel();
                }
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::warn!("giving up on rows not yet committed");
                    on_abandon.cancel();
                }
            });
            let summary = import::import(
                &cfg,
                ImportOptions {
                    paths,
                    show_progress: true,
                    stop,
                    abandon,
                },
            )
            .await?;
            print!("{summary}");
            if summary.interrupted {
                eprintln!("mdingest: error: import interrupted; rows read so far are committed");
                return Ok(ExitCode::from(130));
            }
            if !summary.failed.is_empty() {
                for f in &summary.failed {
                    eprintln!("mdingest: error: {f}");
                }
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `RUST_LOG` wins over `log.level`; logs go to stderr so stdout stays the command's output.
fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // refinery narrates every migration at info; `migrate` prints its own summary.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{},refinery_core=warn", cfg.log.level))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
