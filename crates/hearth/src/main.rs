//! The `hearth` binary: parses arguments, loads configuration and wires the
//! services together. No logic lives here that a test would want to reach
//! without a process; see `hearth-server` and `hearth-store` for that.

mod config;
mod data;
mod heap;
mod serve;
mod wiring;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    about = "Hearth: a self-hostable realtime document database"
)]
struct Cli {
    /// Log format (levels from RUST_LOG, default info).
    #[arg(long, global = true, env = "HEARTH_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (REST, WebSocket, metrics on one port).
    Serve(ServeArgs),
    /// Write every document as JSON lines (works while a server runs, through its admin API).
    Export(ExportArgs),
    /// Load documents from JSON lines (the format `export` writes) into a stopped server's data dir.
    Import(ImportArgs),
    /// Write a consistent snapshot (works while a server runs, through its admin API).
    Backup(BackupArgs),
    /// Restore a backup into a (new or empty) data directory.
    Restore(RestoreArgs),
    /// Security rules tools.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Play the protocol conformance scenarios (sdk-spec/conformance) against a live server.
    /// Exits non-zero on any failure.
    Conformance {
        /// The server's base URL, e.g. http://127.0.0.1:8080
        #[arg(long)]
        server: String,
        /// The admin key, for scenarios that need REST side effects.
        #[arg(long, env = "HEARTH_ADMIN_KEY")]
        admin_key: Option<String>,
        /// Scenario folder [default: sdk-spec/conformance/scenarios]
        #[arg(long)]
        scenarios: Option<PathBuf>,
        /// A capability this server offers beyond the defaults (repeatable), e.g.
        /// `tiny-retention` for a server started with `[store.retention] max_commits = 10`.
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// Run only the scenarios whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Speak the MessagePack encoding (`hearth.v1.msgpack`) instead of JSON.
        #[arg(long)]
        msgpack: bool,
        /// Check a client SDK instead of the server: run the client checks
        /// (sdk-spec/conformance/CLIENT.md) with this driver command, e.g.
        /// "cargo run -q -p hearth-client --bin hearth-client-driver". Needs --admin-key.
        #[arg(long, value_name = "COMMAND")]
        client_driver: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Run rule unit tests against a rules file, without a server. Exit 1 on any failure.
    Test {
        /// The rule tests file.
        tests: PathBuf,
        /// The rules file under test.
        #[arg(long, default_value = "hearth.rules")]
        rules: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Data directory [default: ./hearth_data]
    #[arg(long, env = "HEARTH_DATA")]
    pub data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "HEARTH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TOML config file (see hearth.example.toml).
    #[arg(long, env = "HEARTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Development mode: requests without credentials act as the admin. Never in production.
    #[arg(long, env = "HEARTH_DEV")]
    pub dev: bool,
    /// The admin key (at least 16 characters); generated and stored in the data dir if unset.
    #[arg(long, env = "HEARTH_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Security rules file (hot-reloaded). Without one, only the admin key has access.
    #[arg(long, env = "HEARTH_RULES")]
    pub rules: Option<PathBuf>,
}

/// How the data commands reach the data: a running server, or the directory.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Data directory. If a server is serving it, the command goes through that server.
    #[arg(long, env = "HEARTH_DATA", default_value = "./hearth_data")]
    pub data: PathBuf,
    /// Talk to this running server (e.g. http://127.0.0.1:8080) instead.
    #[arg(long)]
    pub server: Option<String>,
    /// The admin key for --server (default: HEARTH_ADMIN_KEY, then <data>/admin.key).
    #[arg(long, env = "HEARTH_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub target: Target,
    /// Output file, or - for stdout.
    #[arg(long, default_value = "-")]
    pub out: String,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Data directory (the server must be stopped).
    #[arg(long, env = "HEARTH_DATA", default_value = "./hearth_data")]
    pub data: PathBuf,
    /// A JSON-lines file of documents, or - for stdin.
    pub file: String,
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub target: Target,
    /// Directory to write the backup to (must be missing or empty). With a
    /// running server this path is on the server's machine.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup directory (written by `hearth backup`).
    #[arg(long)]
    pub from: PathBuf,
    /// The data directory to restore into (must be missing or empty unless --force).
    #[arg(long, env = "HEARTH_DATA", default_value = "./hearth_data")]
    pub data: PathBuf,
    /// Replace a non-empty data directory (its contents are deleted).
    #[arg(long)]
    pub force: bool,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args, cli.log_format).await,
            Command::Export(args) => {
                init_logging(cli.log_format.unwrap_or(LogFormat::Pretty));
                data::export(args).await
            }
            Command::Import(args) => {
                init_logging(cli.log_format.unwrap_or(LogFormat::Pretty));
                data::import(args).await
            }
            Command::Backup(args) => {
                init_logging(cli.log_format.unwrap_or(LogFormat::Pretty));
                data::backup(args).await
            }
            Command::Restore(args) => {
                init_logging(cli.log_format.unwrap_or(LogFormat::Pretty));
                data::restore(args)
            }
            Command::Conformance {
                server,
                admin_key,
                scenarios,
                capabilities,
                filter,
                msgpack,
                client_driver: Some(driver),
            } => {
                let Some(admin_key) = admin_key else {
                    return Err("--client-driver needs --admin-key (or HEARTH_ADMIN_KEY): the checks make changes over REST".to_string());
                };
                let options = hearth_conformance::ClientRunOptions {
                    admin_key,
                    driver,
                    schema_dir: scenarios.map(|dir| dir.join("../../schema")),
                    capabilities,
                    filter,
                    msgpack,
                };
                if hearth_conformance::cli_client(&server, options).await == 0 {
                    Ok(())
                } else {
                    Err("client conformance checks failed".to_string())
                }
            }
            Command::Conformance {
                server,
                admin_key,
                scenarios,
                capabilities,
                filter,
                msgpack,
                client_driver: None,
            } => {
                let options = hearth_conformance::RunOptions {
                    admin_key,
                    capabilities,
                    filter,
                    msgpack,
                    ..Default::default()
                };
                let code = hearth_conformance::cli(&server, scenarios.as_deref(), options).await;
                if code == 0 {
                    Ok(())
                } else {
                    Err("conformance scenarios failed".to_string())
                }
            }
            Command::Rules(RulesCommand::Test { tests, rules }) => {
                match hearth_rules::run_rule_test_files(&rules, &tests) {
                    Ok(report) => {
                        print!("{}", report.render());
                        if report.success() {
                            Ok(())
                        } else {
                            Err(format!("{} rule test(s) failed", report.failed))
                        }
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
