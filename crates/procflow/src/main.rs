//! procflow: per-process network traffic monitor and application firewall.
#![forbid(unsafe_code)]

mod api;
mod collector;
mod config;
mod enforce;
mod hub;
mod ipfix;
mod metrics;
mod resolve;
mod rules_cmd;
mod run;
mod sinks;
mod system;
mod view;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Per-process network traffic monitor for Linux: every flow, the process
/// that owns it, and its bytes counted exactly, from eBPF programs in the
/// kernel.
#[derive(Debug, Parser)]
#[command(name = "procflow", version)]
struct Cli {
    /// Log more (repeat for debug output, including libbpf's).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Monitor: load the kernel programs and record every flow.
    Run(run::RunArgs),
    /// Report on the flow history: top processes, remotes, ports over time.
    Report(procflow_store::ReportArgs),
    /// Check a rules file, or explain which rule decides a connection.
    #[command(subcommand)]
    Rules(rules_cmd::RulesCmd),
    /// Check or print the settings of `procflow run`: its configuration
    /// file (/etc/procflow/procflow.toml) under its command line.
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// Live view: processes, their connections, remote hosts, ports and
    /// blocked attempts, redrawn every second (keys: ? for help).
    Top(view::TopArgs),
    /// The processes using the network now, with totals since start and
    /// rates, from the daemon (or, as root without one, standalone).
    Ps(view::PsArgs),
    /// The open flows, with their process, from the daemon (or, as root
    /// without one, standalone).
    Flows(view::FlowsArgs),
    /// Write the man pages (DIR/man), shell completions (DIR/completions)
    /// and example configuration (DIR/procflow.toml) generated from this
    /// command line definition.
    #[command(hide = true)]
    GenerateDocs {
        /// The directory to write into (packaging/ in the source tree).
        dir: std::path::PathBuf,
    },
}

/// Man pages, `procflow(1)` and one per subcommand (`procflow-run(1)`,
/// `procflow-rules-check(1)` ...), bash, zsh and fish completions, and the
/// example configuration, from the clap definition: what packaging/ holds.
fn generate_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // The command line as users see it: without this hidden subcommand
    // (completions would offer it otherwise).
    let full = Cli::command();
    let mut cmd = clap::Command::new("procflow")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(full.is_subcommand_required_set())
        .arg_required_else_help(full.is_arg_required_else_help_set())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(about) = full.get_long_about() {
        cmd = cmd.long_about(about.clone());
    }
    let example = dir.join("procflow.toml");
    std::fs::write(&example, config::example())
        .with_context(|| format!("writing {}", example.display()))?;
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "procflow", &completions)
            .with_context(|| {
                format!("writing {shell} completions into {}", completions.display())
            })?;
    }
    Ok(())
}

fn report(args: &procflow_store::ReportArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match procflow_store::run_report(args, &mut out) {
        Ok(()) | Err(procflow_store::StoreError::BrokenPipe) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn main() -> ExitCode {
    let matches = Cli::command()
        .mut_subcommand("run", config::lenient)
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PROCFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(_) => run::run(matches.subcommand_matches("run").expect("the run command")),
        Command::Config(cmd) => config::run(cmd),
        Command::Rules(cmd) => rules_cmd::run(cmd),
        Command::Report(mut args) => {
            let sub = matches
                .subcommand_matches("report")
                .expect("the report command");
            if let Some(db) = config::from_default_file(sub, "db", "db") {
                args.db = db;
            }
            report(&args)
        }
        Command::Top(mut args) => {
            args.client.use_configured_api(&matches, "top");
            view::top(&args)
        }
        Command::Ps(mut args) => {
            args.client.use_configured_api(&matches, "ps");
            view::ps(&args)
        }
        Command::Flows(mut args) => {
            args.client.use_configured_api(&matches, "flows");
            view::flows(&args)
        }
        Command::GenerateDocs { dir } => generate_docs(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procflow: {e:#}");
            // Refused settings are usage errors, as clap's own are.
            ExitCode::from(if e.is::<config::Refused>() { 2 } else { 1 })
        }
    }
}
