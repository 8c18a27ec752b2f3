//! The configuration file: `procflow run`'s options, in TOML.
//!
//! Every key is the long name of an option of `procflow run`
//! (`log-max-size = "100M"` is `--log-max-size 100M`), so the file and the
//! command line cannot drift apart: a new option is a new key, checked by
//! the same value parser. Options given on the command line override the
//! file (and the file's options they conflict with). Unknown keys, values of
//! the wrong type and values the option refuses are reported with file,
//! line and column, and nothing of a refused file is used.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, FromArgMatches};
use procflow_core::rules::{closest, line_col, Diagnostic};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::run::RunArgs;

/// Where `procflow run` looks for its settings when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/procflow/procflow.toml";

/// Settings that SIGHUP takes over while running; a change to any other
/// takes effect at the next start.
pub const RELOADABLE: &[&str] = &[
    "log",
    "log-max-size",
    "log-keep",
    "retain",
    "fold-under",
    "fold-above",
    "interval",
    "rules",
    "enforce-existing",
];

/// Example values, in the example configuration, for the options that have
/// no default.
const EXAMPLES: &[(&str, &str)] = &[
    ("log", "\"/var/log/procflow/flows.jsonl\""),
    ("interval", "\"5m\""),
    ("duration", "\"1h\""),
    ("rules", "\"/etc/procflow/rules.toml\""),
    ("resolver", "[\"192.0.2.53\", \"[2001:db8::53]:53\"]"),
    ("metrics", "\"127.0.0.1:9464\""),
    ("ipfix", "\"192.0.2.10:4739\""),
];

/// Options of `procflow run` that only the command line can give.
const CLI_ONLY: &[&str] = &["config", "no-config"];

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Read the settings of `procflow run` from FILE (default:
    /// /etc/procflow/procflow.toml, when it exists); options given on the
    /// command line override it. SIGHUP reads it again.
    #[arg(long, value_name = "FILE", conflicts_with = "no_config")]
    pub config: Option<PathBuf>,
    /// Read no configuration file, not even the default one.
    #[arg(long)]
    pub no_config: bool,
}

/// A configuration file that was refused: every problem found in it, one
/// `file:line:column: message` line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        procflow_core::rules::write_lines(f, &self.diagnostics)
    }
}

impl std::error::Error for ConfigError {}

/// Settings `procflow run` refused (its command line with its file): a
/// usage error, exit status 2.
#[derive(Debug)]
pub struct Refused(pub anyhow::Error);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Refused {}

/// `procflow run`'s command line definition, alone.
pub fn run_command() -> clap::Command {
    let mut cmd = RunArgs::augment_args(clap::Command::new("run"));
    cmd.build();
    cmd
}

/// `procflow run`'s command line before the file is read: an option that
/// needs another (`--log-keep` needs `--log`) may find it in the file, so
/// that is checked once both are known.
pub fn lenient(run: clap::Command) -> clap::Command {
    run.mut_args(|a| a.requires(clap::builder::Resettable::<clap::Id>::Reset))
}

/// The options a file may set: (key, clap id), in the order `run --help`
/// lists them.
fn settable(cmd: &clap::Command) -> Vec<(&str, &str)> {
    cmd.get_arguments()
        .filter_map(|a| Some((a.get_long()?, a.get_id().as_str())))
        .filter(|(long, _)| !CLI_ONLY.contains(long) && !matches!(*long, "help" | "version"))
        .collect()
}

/// One key of the file.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    id: String,
    /// The option's values as the command line would give them; an option
    /// without values is a flag that is on. `None`: a flag set to false.
    values: Option<Vec<String>>,
    line: usize,
    column: usize,
}

/// A configuration file, read and checked key by key.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    entries: Vec<Entry>,
}

impl ConfigFile {
    /// Reads and checks `path`: its syntax, its keys, and each value
    /// against its option's parser.
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let name = path.display().to_string();
        if let Err(message) = crate::system::only_root_can_change(path) {
            return Err(ConfigError {
                diagnostics: vec![Diagnostic {
                    file: name,
                    line: 1,
                    column: 1,
                    message,
                }],
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            diagnostics: vec![Diagnostic {
                file: name.clone(),
                line: 1,
                column: 1,
                message: format!("cannot read the configuration file: {e}"),
            }],
        })?;
        Self::parse(&name, &text).map(|entries| ConfigFile { entries })
    }

    fn parse(file: &str, text: &str) -> Result<Vec<Entry>, ConfigError> {
        let mut diags = Vec::new();
        let mut error = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            diags.push(Diagnostic {
                file: file.to_string(),
                line,
                column,
                message,
            });
        };
        let doc = match DeTable::parse(text) {
            Ok(d) => d,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                error(span, format!("TOML syntax: {}", e.message().trim_end()));
                return Err(ConfigError { diagnostics: diags });
            }
        };
        let cmd = run_command();
        let keys = settable(&cmd);
        let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
        let mut entries = Vec::new();
        for (k, v) in doc.get_ref().iter() {
            let key: &str = k.get_ref();
            let Some(&(_, id)) = keys.iter().find(|(long, _)| *long == key) else {
                let hint = if CLI_ONLY.contains(&key) {
                    format!("`{key}` is given on the command line only")
                } else {
                    match closest(key, &names) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!(
                            "the keys are the options of `procflow run`: {}",
                            names.join(", ")
                        ),
                    }
                };
                error(k.span(), format!("unknown key `{key}`; {hint}"));
                continue;
            };
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == id)
                .expect("listed");
            let values = match value_of(key, arg.get_action(), v) {
                Ok(values) => values,
                Err(message) => {
                    error(v.span(), message);
                    continue;
                }
            };
            // The value through the option's own parser, alone: other
            // options' requirements are checked once all are known.
            if let Some(vals) = &values {
                let mut argv: Vec<String> = vec!["run".into()];
                argv.extend(vals.iter().map(|x| format!("--{key}={x}")));
                if vals.is_empty() {
                    argv.push(format!("--{key}"));
                }
                if let Err(e) = cmd.clone().try_get_matches_from(argv) {
                    use clap::error::ErrorKind;
                    if matches!(
                        e.kind(),
                        ErrorKind::ValueValidation | ErrorKind::InvalidValue
                    ) {
                        error(v.span(), format!("`{key}`: {}", value_reason(&e)));
                        continue;
                    }
                }
            }
            let (line, column) = line_col(text, k.span().start);
            entries.push(Entry {
                key: key.to_string(),
                id: id.to_string(),
                values,
                line,
                column,
            });
        }
        if diags.is_empty() {
            Ok(entries)
        } else {
            diags.sort_by_key(|d| (d.line, d.column));
            Err(ConfigError { diagnostics: diags })
        }
    }
}

/// The value `key` has in the default configuration file, for another
/// command's option `id` (report's `--db`, the viewers' `--api`) that its
/// command line did not give: those commands find what the service uses.
/// A refused file is said and leaves the option's default.
pub fn from_default_file(sub: &ArgMatches, id: &str, key: &str) -> Option<PathBuf> {
    let path = Path::new(DEFAULT_PATH);
    if sub.value_source(id) == Some(ValueSource::CommandLine) || !path.exists() {
        return None;
    }
    match ConfigFile::read(path) {
        Ok(c) => c
            .entries
            .into_iter()
            .find(|e| e.key == key)
            .and_then(|e| e.values?.into_iter().next())
            .map(PathBuf::from),
        Err(e) => {
            tracing::warn!("{e}\n(the configuration file is refused; --{key} keeps its default)");
            None
        }
    }
}

/// A TOML value as the option's command-line values.
fn value_of(
    key: &str,
    action: &ArgAction,
    v: &Spanned<DeValue<'_>>,
) -> Result<Option<Vec<String>>, String> {
    let scalar = |v: &DeValue<'_>| -> Result<String, String> {
        match v {
            DeValue::String(s) => Ok(s.to_string()),
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                i128::from_str_radix(&digits, i.radix())
                    .map(|n| n.to_string())
                    .map_err(|_| format!("`{key}`: integer {i} is out of range"))
            }
            DeValue::Float(f) => Ok(f.as_str().to_string()),
            other => Err(format!(
                "`{key}` must be a string or a number, found {}",
                type_name(other)
            )),
        }
    };
    match action {
        ArgAction::SetTrue => match v.get_ref() {
            DeValue::Boolean(true) => Ok(Some(Vec::new())),
            DeValue::Boolean(false) => Ok(None),
            other => Err(format!(
                "`{key}` must be true or false, found {}",
                type_name(other)
            )),
        },
        ArgAction::Append => match v.get_ref() {
            DeValue::Array(a) if a.is_empty() => Ok(None),
            DeValue::Array(a) => a
                .iter()
                .map(|e| scalar(e.get_ref()))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            other => scalar(other).map(|s| Some(vec![s])),
        },
        _ => scalar(v.get_ref()).map(|s| Some(vec![s])),
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::Table(_) => "a table (the settings are top-level keys)",
        other => procflow_core::rules::type_name(other),
    }
}

/// Why a value was refused: the option's parser's own words when it has
/// them (the file's message names the key already).
fn value_reason(e: &clap::Error) -> String {
    use std::error::Error;
    match e.source() {
        Some(src) => src.to_string(),
        None => clap_reason(e),
    }
}

/// What clap says is wrong, without its "error:" and usage lines.
fn clap_reason(e: &clap::Error) -> String {
    // The message runs to the first empty line; usage and help follow.
    let text = e.to_string();
    let msg: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let msg = msg.join(" ");
    msg.strip_prefix("error: ").unwrap_or(&msg).to_string()
}

/// Where an effective setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { line: usize, column: usize },
    CommandLine,
}

/// The settings `procflow run` works with: the file (if any) under the
/// command line, checked together.
#[derive(Debug, Clone)]
pub struct Settings {
    pub args: RunArgs,
    /// The file read, when one was.
    pub file: Option<PathBuf>,
    /// The options given on the command line, as (id, values).
    cli: Vec<(String, Vec<OsString>)>,
    /// Every option's values (as text) and their source, by key.
    values: BTreeMap<String, (Vec<String>, Source)>,
    /// Options whose default is not in force, with the option set that
    /// conflicts with it.
    unused_defaults: Vec<(String, String)>,
    /// Every option a file may set, in `procflow run --help` order, with
    /// how it takes values.
    options: Vec<(String, ArgAction)>,
}

impl Settings {
    /// The settings of `procflow run` from its parsed command line.
    pub fn load(run: &ArgMatches) -> anyhow::Result<Settings> {
        let cmd = run_command();
        let mut cli = Vec::new();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if run.value_source(id) == Some(ValueSource::CommandLine) {
                let vals = run
                    .get_raw(id)
                    .map(|r| r.map(OsString::from).collect())
                    .unwrap_or_default();
                cli.push((id.to_string(), vals));
            }
        }
        let given = |id: &str| cli.iter().any(|(i, _)| i == id);
        let file = if given("no_config") {
            None
        } else if let Some(p) = run.get_raw("config").filter(|_| given("config")) {
            Some(PathBuf::from(p.into_iter().next().unwrap_or_default()))
        } else {
            Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists())
        };
        Self::assemble(cmd, cli, file)
    }

    /// The same command line with the file read again (SIGHUP).
    pub fn reload(&self) -> anyhow::Result<Settings> {
        Self::assemble(run_command(), self.cli.clone(), self.file.clone())
    }

    fn assemble(
        cmd: clap::Command,
        cli: Vec<(String, Vec<OsString>)>,
        file: Option<PathBuf>,
    ) -> anyhow::Result<Settings> {
        let config = file.as_deref().map(ConfigFile::read).transpose()?;
        let arg_of = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .expect("an option of run")
        };
        let given = |id: &str| cli.iter().any(|(i, _)| i == id);
        // A file's option is overridden by the same option on the command
        // line, and by one that conflicts with it.
        let overridden = |id: &str| {
            given(id)
                || cmd
                    .get_arg_conflicts_with(arg_of(id))
                    .iter()
                    .any(|c| given(c.get_id().as_str()))
        };
        let mut argv: Vec<OsString> = vec!["run".into()];
        let mut from_file = Vec::new();
        for e in config.iter().flat_map(|c| &c.entries) {
            let Some(vals) = e.values.as_ref().filter(|_| !overridden(&e.id)) else {
                continue;
            };
            if vals.is_empty() {
                argv.push(format!("--{}", e.key).into());
            }
            argv.extend(vals.iter().map(|v| format!("--{}={v}", e.key).into()));
            from_file.push(e);
        }
        for (id, vals) in &cli {
            let long = arg_of(id).get_long().expect("every option of run is long");
            if vals.is_empty() || matches!(arg_of(id).get_action(), ArgAction::SetTrue) {
                argv.push(format!("--{long}").into());
            } else {
                for v in vals {
                    let mut a = OsString::from(format!("--{long}="));
                    a.push(v);
                    argv.push(a);
                }
            }
        }
        let matches = cmd.clone().try_get_matches_from(argv).map_err(|e| {
            let mut msg = clap_reason(&e);
            let involved: Vec<String> = from_file
                .iter()
                .filter(|f| msg.contains(&format!("--{}", f.key)))
                .map(|f| {
                    format!(
                        "{}:{}:{} sets `{}`",
                        file.as_deref().unwrap_or(Path::new("")).display(),
                        f.line,
                        f.column,
                        f.key
                    )
                })
                .collect();
            if !involved.is_empty() {
                msg = format!("{msg} ({})", involved.join("; "));
            }
            anyhow::anyhow!("the settings do not fit together: {msg}")
        })?;
        let args = RunArgs::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut values = BTreeMap::new();
        let mut set = Vec::new();
        for (key, id) in settable(&cmd) {
            let vals: Vec<String> = matches
                .get_raw(id)
                .map(|r| r.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let source = if given(id) {
                Source::CommandLine
            } else if let Some(f) = from_file.iter().find(|f| f.id == id) {
                Source::File {
                    line: f.line,
                    column: f.column,
                }
            } else {
                Source::Default
            };
            if source != Source::Default {
                set.push(id);
            }
            values.insert(key.to_string(), (vals, source));
        }
        let mut unused_defaults = Vec::new();
        for (key, id) in settable(&cmd) {
            if values[key].1 != Source::Default {
                continue;
            }
            if let Some(by) = cmd
                .get_arg_conflicts_with(arg_of(id))
                .into_iter()
                .find(|c| set.contains(&c.get_id().as_str()))
            {
                let by = by.get_long().unwrap_or_default().to_string();
                unused_defaults.push((key.to_string(), by));
            }
        }
        let options = settable(&cmd)
            .into_iter()
            .map(|(key, id)| (key.to_string(), arg_of(id).get_action().clone()))
            .collect();
        Ok(Settings {
            args,
            file,
            cli,
            values,
            unused_defaults,
            options,
        })
    }

    /// The keys in `procflow run --help` order.
    fn keys(&self) -> Vec<String> {
        self.options.iter().map(|(k, _)| k.clone()).collect()
    }

    /// The value of `key` as TOML (None: not set).
    fn toml_value(&self, key: &str) -> Option<String> {
        let (_, action) = self.options.iter().find(|(k, _)| k == key)?;
        let (vals, _) = &self.values[key];
        let item = |v: &String| {
            if !v.is_empty() && v.len() <= 18 && v.bytes().all(|b| b.is_ascii_digit()) {
                v.clone()
            } else {
                toml_string(v)
            }
        };
        match action {
            ArgAction::SetTrue => Some(
                if vals.first().is_some_and(|v| v == "true") {
                    "true"
                } else {
                    "false"
                }
                .to_string(),
            ),
            ArgAction::Append if vals.is_empty() => None,
            ArgAction::Append => Some(format!(
                "[{}]",
                vals.iter().map(item).collect::<Vec<_>>().join(", ")
            )),
            _ => vals.first().map(item),
        }
    }

    /// The option whose setting keeps `key`'s default out of force.
    fn displaced_by(&self, key: &str) -> Option<&str> {
        self.unused_defaults
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, by)| by.as_str())
    }

    fn source_text(&self, key: &str) -> String {
        match &self.values[key].1 {
            Source::Default => match self.displaced_by(key) {
                Some(by) => format!("default, not in force: `{by}` is set"),
                None => "default".to_string(),
            },
            Source::CommandLine => "command line".to_string(),
            Source::File { line, column } => format!(
                "{}:{line}:{column}",
                self.file.as_deref().unwrap_or(Path::new("")).display()
            ),
        }
    }

    /// The effective settings as a configuration file: the options set
    /// (in the file or on the command line) with their value and where it
    /// came from; defaults as comments, so that the output read back as a
    /// configuration file gives the same settings.
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "# procflow run's effective settings ({}, then the command line)\n",
            match &self.file {
                Some(f) => format!("from {}", f.display()),
                None => "no configuration file".to_string(),
            }
        );
        for key in self.keys() {
            let source = self.source_text(&key);
            match self.toml_value(&key) {
                None => out.push_str(&format!("# {key}: not set\n")),
                Some(v) if self.values[&key].1 == Source::Default => {
                    out.push_str(&format!("# {key} = {v}  # {source}\n"))
                }
                Some(v) => out.push_str(&format!("{key} = {v}  # {source}\n")),
            }
        }
        out
    }

    /// The keys whose values differ between two settings.
    pub fn changed(&self, newer: &Settings) -> Vec<String> {
        self.keys()
            .into_iter()
            .filter(|k| self.values[k].0 != newer.values[k].0)
            .collect()
    }

    /// The value of `key` as a person reads it.
    pub fn shown(&self, key: &str) -> String {
        self.toml_value(key).unwrap_or_else(|| "(not set)".into())
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCmd {
    /// Check a configuration file (default: /etc/procflow/procflow.toml) and
    /// print the effective settings of `procflow run`, with where each one
    /// comes from. Options of `procflow run` after `--` override the file,
    /// as they would on its command line.
    Check {
        /// The configuration file.
        file: Option<PathBuf>,
        /// Options of `procflow run`.
        #[arg(last = true, value_name = "RUN-OPTIONS")]
        options: Vec<OsString>,
    },
    /// Print the effective settings of `procflow run` as a configuration
    /// file (TOML), from the configuration file (default:
    /// /etc/procflow/procflow.toml) and the options after `--`.
    Show {
        /// The configuration file.
        file: Option<PathBuf>,
        /// Options of `procflow run`.
        #[arg(last = true, value_name = "RUN-OPTIONS")]
        options: Vec<OsString>,
    },
}

/// `procflow config check|show`.
pub fn run(cmd: ConfigCmd) -> anyhow::Result<()> {
    let (file, options, show) = match cmd {
        ConfigCmd::Check { file, options } => (file, options, false),
        ConfigCmd::Show { file, options } => (file, options, true),
    };
    let mut argv: Vec<OsString> = vec!["run".into()];
    if let Some(f) = &file {
        argv.push("--config".into());
        argv.push(f.into());
    }
    argv.extend(options);
    let matches = lenient(RunArgs::augment_args(clap::Command::new("run")))
        .try_get_matches_from(argv)
        .map_err(|e| anyhow::anyhow!("the options after `--`: {}", clap_reason(&e)))?;
    let settings = Settings::load(&matches)?;
    if show {
        print!("{}", settings.to_toml());
        return Ok(());
    }
    match &settings.file {
        Some(f) => eprintln!("procflow: {} is valid", f.display()),
        None => eprintln!("procflow: no configuration file at {DEFAULT_PATH}; the defaults apply"),
    }
    let keys = settings.keys();
    let width = keys.iter().map(String::len).max().unwrap_or(0);
    let shown: Vec<String> = keys.iter().map(|k| settings.shown(k)).collect();
    let vwidth = shown.iter().map(String::len).max().unwrap_or(0).min(48);
    for (k, v) in keys.iter().zip(&shown) {
        println!("{k:width$}  {v:vwidth$}  {}", settings.source_text(k));
    }
    Ok(())
}

/// The example configuration (packaging/procflow.toml, installed as
/// /etc/procflow/procflow.toml): every option of `procflow run`, commented
/// out, with its help, and its default or an example value. Generated from
/// the command line definition, so it lists every option there is.
pub fn example() -> String {
    let mut out = String::from(
        "# procflow's configuration: the settings of `procflow run`, the service.\n\
         #\n\
         # Each key is an option of `procflow run` (procflow-run(1)) without its\n\
         # leading dashes; an option given on the command line overrides the file.\n\
         # Every option is shown below, commented out, with its default (or an\n\
         # example when it has none): remove the # to set one.\n\
         #\n\
         # `procflow config check` checks this file and prints the settings in force;\n\
         # `procflow config show` prints them as a file like this one. SIGHUP\n\
         # (systemctl reload procflow) reads it again: the options marked\n\
         # \"on reload\" change at once, the others at the next restart. A file with\n\
         # an error is refused whole, with its file, line and column, and the\n\
         # settings in force stay in force.\n",
    );
    let cmd = run_command();
    for (key, id) in settable(&cmd) {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == id)
            .expect("listed");
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| {
                let h = h.to_string();
                if h.ends_with('.') {
                    h
                } else {
                    h + "."
                }
            })
            .unwrap_or_default();
        out.push('\n');
        for line in wrap(&help, 74) {
            out.push_str(&format!("# {line}\n"));
        }
        let when = if RELOADABLE.contains(&key) {
            "on reload"
        } else {
            "at restart"
        };
        let value = match arg.get_action() {
            ArgAction::SetTrue => "false".to_string(),
            _ => match arg.get_default_values().first() {
                Some(d) => {
                    let d = d.to_string_lossy();
                    if d.bytes().all(|b| b.is_ascii_digit()) {
                        d.into_owned()
                    } else {
                        toml_string(&d)
                    }
                }
                None => EXAMPLES
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_else(|| panic!("option --{key} has no default and no example")),
            },
        };
        let what = if arg.get_default_values().is_empty()
            && !matches!(arg.get_action(), ArgAction::SetTrue)
        {
            "example; not set by default"
        } else {
            "default"
        };
        out.push_str(&format!(
            "# ({what}; takes effect {when})\n# {key} = {value}\n"
        ));
    }
    out
}

/// `text` in lines of at most `width` characters (a longer word stays
/// whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn settings(file: &Path, cli: &[&str]) -> anyhow::Result<Settings> {
        let mut argv = vec![
            "run".to_string(),
            "--config".into(),
            file.display().to_string(),
        ];
        argv.extend(cli.iter().map(|s| s.to_string()));
        Settings::load(&run_command().try_get_matches_from(argv).unwrap())
    }

    fn diags(text: &str) -> Vec<(usize, usize, String)> {
        ConfigFile::parse("f.toml", text)
            .unwrap_err()
            .diagnostics
            .into_iter()
            .map(|d| (d.line, d.column, d.message))
            .collect()
    }

    #[test]
    fn a_file_sets_the_options_of_run() {
        let f = write(
            "log = \"/tmp/flows.jsonl\"\nlog-keep = 3\ninterval = 0.5\nretain = \"7d\"\n\
             resolve = true\nresolver = [\"192.0.2.53\", \"[2001:db8::1]:5353\"]\nno-api = true\n",
        );
        let s = settings(f.path(), &[]).unwrap();
        let a = &s.args;
        assert_eq!(a.sinks.log.as_deref(), Some(Path::new("/tmp/flows.jsonl")));
        assert_eq!(a.sinks.log_keep, 3);
        assert_eq!(a.interval, Some(std::time::Duration::from_millis(500)));
        assert_eq!(a.sinks.retain, std::time::Duration::from_secs(7 * 86400));
        assert_eq!(a.resolve.resolver.len(), 2);
        assert!(a.api.no_api);
        assert_eq!(s.values["log-keep"].1, Source::File { line: 2, column: 1 });
        assert_eq!(s.values["db"].1, Source::Default);
    }

    #[test]
    fn the_command_line_overrides_the_file_and_what_conflicts_with_it() {
        let f = write("log-keep = 3\ndb = \"/tmp/a.db\"\ninterval = 10\n");
        let s = settings(f.path(), &["--log-keep", "9", "--no-db", "--log", "-"]).unwrap();
        assert_eq!(s.args.sinks.log_keep, 9);
        assert!(s.args.sinks.no_db, "--no-db wins over the file's db");
        assert_eq!(s.args.interval, Some(std::time::Duration::from_secs(10)));
        assert_eq!(s.values["log-keep"].1, Source::CommandLine);
        assert_eq!(s.values["interval"].1, Source::File { line: 3, column: 1 });
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_column_in_file_order() {
        let d = diags("log-kep = 3\ninterval = \"ten\"\nretain = true\n[api]\nx = 1\n");
        assert_eq!(d.len(), 4, "{d:?}");
        assert_eq!((d[0].0, d[0].1), (1, 1));
        assert!(
            d[0].2
                .contains("unknown key `log-kep`; did you mean `log-keep`?"),
            "{}",
            d[0].2
        );
        assert_eq!((d[1].0, d[1].1), (2, 12));
        assert!(
            d[1].2
                .contains("`interval`: \"ten\" is not a number of seconds"),
            "{}",
            d[1].2
        );
        assert_eq!((d[2].0, d[2].1), (3, 10));
        assert!(d[2]
            .2
            .contains("`retain` must be a string or a number, found a boolean"));
        assert_eq!(d[3].0, 4);
        assert!(d[3].2.contains("a table"), "{}", d[3].2);
    }

    #[test]
    fn bad_values_and_keys_are_refused() {
        for (text, want) in [
            ("log-keep = -1\n", "`log-keep`"),
            ("log-max-size = \"12Q\"\n", "`log-max-size`"),
            ("no-db = \"yes\"\n", "must be true or false"),
            (
                "resolver = \"not an address\"\n",
                "is not a name server address",
            ),
            ("config = \"/x\"\n", "given on the command line only"),
            ("colour = 1\n", "the keys are the options of `procflow run`"),
            ("log = [\n", "TOML syntax"),
            ("log = \"a\"\nlog = \"b\"\n", "TOML syntax"),
        ] {
            let d = diags(text);
            assert!(
                d.iter().any(|(_, _, m)| m.contains(want)),
                "{text:?}: {d:?} does not say {want:?}"
            );
        }
    }

    #[test]
    fn options_that_do_not_fit_together_name_their_lines() {
        let f = write("no-db = true\ndb = \"/tmp/x.db\"\n");
        let e = settings(f.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("cannot be used with"), "{e}");
        assert!(
            e.contains(":1:1 sets `no-db`") && e.contains(":2:1 sets `db`"),
            "{e}"
        );
        let f = write("log-keep = 2\n");
        let e = settings(f.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("--log"), "{e}");
        // The command line can supply what the file's option needs.
        settings(f.path(), &["--log", "-"]).unwrap();
    }

    #[test]
    fn show_reads_back_as_the_same_settings() {
        let f = write(
            "log = \"/tmp/f.jsonl\"\nresolve = true\nresolver = \"192.0.2.1\"\nfold-above = 7\n",
        );
        let s = settings(f.path(), &["--interval", "30s", "--no-api"]).unwrap();
        let shown = write(&s.to_toml());
        let again = settings(shown.path(), &[]).unwrap();
        assert!(s.changed(&again).is_empty(), "{}", s.to_toml());
        assert!(again.args.api.no_api);
        assert_eq!(
            again.args.interval,
            Some(std::time::Duration::from_secs(30))
        );
    }

    #[test]
    fn the_example_lists_every_option_and_each_reads_as_its_default() {
        let example = example();
        let cmd = run_command();
        let mut text = String::new();
        for (key, _) in settable(&cmd) {
            let line = format!("# {key} = ");
            let found: Vec<&str> = example.lines().filter(|l| l.starts_with(&line)).collect();
            assert_eq!(
                found.len(),
                1,
                "the example sets `{key}` {} times",
                found.len()
            );
            text.push_str(&found[0][2..]);
            text.push('\n');
        }
        // --resolver needs --resolve.
        let text = text.replace("resolve = false", "resolve = true");
        let f = write(&text);
        let s = settings(f.path(), &[]).unwrap();
        let defaults = settings(write("").path(), &[]).unwrap();
        for key in s.changed(&defaults) {
            assert!(
                EXAMPLES.iter().any(|(k, _)| *k == key) || key == "resolve",
                "the example's `{key}` is not its default"
            );
        }
    }

    #[test]
    fn settings_that_changed_are_named() {
        let a = write("interval = 10\ndb = \"/tmp/a.db\"\n");
        let s = settings(a.path(), &[]).unwrap();
        std::fs::write(a.path(), "interval = 20\ndb = \"/tmp/b.db\"\n").unwrap();
        let t = s.reload().unwrap();
        assert_eq!(
            s.changed(&t),
            vec!["db".to_string(), "interval".to_string()]
        );
        std::fs::write(a.path(), "interval = \"x\"\n").unwrap();
        assert!(s.reload().is_err());
    }
}
