//! Layered loading: defaults < file < `APTGATE_…` environment < command-line flags, with the
//! origin of every value remembered for `aptgate config show`.

use crate::Config;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use toml::{Table, Value};

/// Environment variables the CLI reads itself; they are not configuration keys.
const NOT_KEYS: &[&str] = &[
    "APTGATE_CONFIG",
    "APTGATE_LOG",
    "APTGATE_LOG_FORMAT",
    "APTGATE_SERVER",
    "APTGATE_TOKEN",
    "APTGATE_TEST_POSTGRES_URL",
];

#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// The TOML file; it must exist when given.
    pub file: Option<PathBuf>,
    /// The process environment; only `APTGATE_…` variables are read.
    pub env: Vec<(String, String)>,
    /// Command-line flags: the setting each one overrides.
    pub overrides: Vec<Override>,
}

/// A command-line flag that sets one configuration key.
#[derive(Debug, Clone)]
pub struct Override {
    /// The dotted key (`server.listen`).
    pub key: String,
    pub value: String,
    /// The flag as the user typed it (`--listen`), for `config show`.
    pub flag: String,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    /// The flag, e.g. `--listen`.
    Cli(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Cli(flag) => write!(f, "cli {flag}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}\nhint: see config/aptgate.example.toml for every key")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {key} = {value:?}: {message}")]
    BadValue {
        origin: String,
        key: String,
        value: String,
        message: String,
    },
    #[error("unknown setting {origin}\nhint: known keys: {known}")]
    UnknownKey { origin: String, known: String },
    #[error("invalid configuration: {message}\nhint: run `aptgate config show` to see each value and where it came from")]
    Invalid { message: String },
}

/// The effective configuration and where each value came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Dotted key (`mirror.read_timeout`, `sources`) → origin.
    pub origins: BTreeMap<String, Origin>,
}

pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let defaults = Value::try_from(Config::default()).expect("defaults serialize");
    let Value::Table(mut merged) = defaults else {
        unreachable!("Config serializes to a table")
    };
    let mut origins = BTreeMap::new();
    leaves(&merged, "", &mut |key| {
        origins.insert(key, Origin::Default);
    });
    let scalar_keys: Vec<String> = origins.keys().cloned().collect();

    if let Some(path) = &opts.file {
        let text = fs_err::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        // The full TOML error shows the line, column and the offending text.
        let table: Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        leaves(&table, "", &mut |key| {
            origins.insert(top_level_array(&key), Origin::File(path.clone()));
        });
        merge(&mut merged, table);
    }

    let mut layered: Vec<(String, String, Origin)> = Vec::new();
    for (var, value) in &opts.env {
        let Some(rest) = var.strip_prefix("APTGATE_") else {
            continue;
        };
        if NOT_KEYS.contains(&var.as_str()) {
            continue;
        }
        let key = rest.to_lowercase().replace("__", ".");
        layered.push((key, value.clone(), Origin::Env(var.clone())));
    }
    for o in &opts.overrides {
        layered.push((o.key.clone(), o.value.clone(), Origin::Cli(o.flag.clone())));
    }
    for (key, text, origin) in layered {
        if !scalar_keys.contains(&key) {
            let shown = match &origin {
                Origin::Env(var) => format!("environment variable {var}"),
                other => format!("{other} ({key})"),
            };
            return Err(ConfigError::UnknownKey {
                origin: shown,
                known: scalar_keys.join(", "),
            });
        }
        let like = lookup(&merged, &key)
            .cloned()
            .unwrap_or(Value::String(String::new()));
        let value = typed_like(&like, &text).map_err(|message| ConfigError::BadValue {
            origin: origin.to_string(),
            key: key.clone(),
            value: text.clone(),
            message,
        })?;
        set(&mut merged, &key, value);
        origins.insert(key, origin);
    }

    let config: Config = Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: opts.file.clone().unwrap_or_else(|| "(environment)".into()),
            message: e.message().to_owned(),
        })?;
    config.validate()?;
    Ok(Loaded { config, origins })
}

/// `sources.0.name` → `sources`, `fleet.rules.0.name` → `fleet.rules`: an array of tables
/// is one value for provenance.
fn top_level_array(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.iter().position(|p| p.parse::<usize>().is_ok()) {
        Some(i) if i > 0 => parts[..i].join("."),
        _ => key.to_owned(),
    }
}

/// Calls `f` with the dotted key of every leaf; arrays count as leaves, arrays of tables by
/// index.
fn leaves(table: &Table, prefix: &str, f: &mut impl FnMut(String)) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => leaves(t, &key, f),
            Value::Array(items) if items.iter().any(Value::is_table) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Table(t) = item {
                        leaves(t, &format!("{key}.{i}"), f);
                    }
                }
            }
            _ => f(key),
        }
    }
}

fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn set(table: &mut Table, key: &str, value: Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(t) = entry {
                set(t, rest, value);
            }
        }
        None => {
            table.insert(key.to_owned(), value);
        }
    }
}

/// Parses text from the environment or a flag as the same TOML type as `like`.
fn typed_like(like: &Value, text: &str) -> Result<Value, String> {
    Ok(match like {
        Value::Integer(_) => Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| "expected a whole number".to_owned())?,
        ),
        Value::Boolean(_) => Value::Boolean(match text.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err("expected true or false".into()),
        }),
        Value::Float(_) => Value::Float(
            text.trim()
                .parse()
                .map_err(|_| "expected a number".to_owned())?,
        ),
        Value::Array(_) => Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        _ => Value::String(text.to_owned()),
    })
}

impl Loaded {
    /// The effective configuration as TOML, each value followed by `# from <origin>`.
    /// Stripped of comments, the text parses back to the same configuration.
    pub fn render(&self) -> String {
        let value = Value::try_from(&self.config).expect("config serializes");
        let Value::Table(table) = value else {
            unreachable!("Config serializes to a table")
        };
        let mut out = String::new();
        self.render_table(&table, "", &mut out);
        out
    }

    fn render_table(&self, table: &Table, prefix: &str, out: &mut String) {
        // Scalars first (TOML requires them before sub-tables), then tables, then sources.
        for (k, v) in table {
            if v.is_table() || is_table_array(v) {
                continue;
            }
            let key = join(prefix, k);
            let origin = self.origins.get(&key).cloned().unwrap_or(Origin::Default);
            // Secrets (`replica.token`) are never printed.
            if k.ends_with("token") {
                out.push_str(&format!("{k} = \"<redacted>\"  # from {origin}\n"));
                continue;
            }
            out.push_str(&format!("{k} = {v}  # from {origin}\n"));
        }
        for (k, v) in table {
            if let Value::Table(t) = v {
                let key = join(prefix, k);
                out.push_str(&format!("\n[{key}]\n"));
                self.render_table(t, &key, out);
            }
        }
        for (k, v) in table {
            if let (true, Value::Array(items)) = (is_table_array(v), v) {
                let key = join(prefix, k);
                let origin = self.origins.get(&key).cloned().unwrap_or(Origin::Default);
                for item in items {
                    out.push_str(&format!("\n[[{key}]]  # from {origin}\n"));
                    if let Value::Table(t) = item {
                        for (ik, iv) in t {
                            out.push_str(&format!("{ik} = {iv}\n"));
                        }
                    }
                }
            }
        }
        if prefix.is_empty() && self.config.sources.is_empty() {
            out.push_str(&format!(
                "\n# sources: none configured; `serve` imports the host's apt sources from {}\n",
                self.config.host_apt.dir.display()
            ));
        }
    }
}

fn is_table_array(v: &Value) -> bool {
    matches!(v, Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table))
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_owned()
    } else {
        format!("{prefix}.{k}")
    }
}

impl Config {
    /// Checks what serde cannot: relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid { message });
        let mut seen = std::collections::HashSet::new();
        for s in &self.sources {
            if !seen.insert(s.name.as_str()) {
                return invalid(format!("source name {:?} is used twice", s.name.as_str()));
            }
            if s.is_local() {
                validate_local(s)?;
                continue;
            }
            let Some(url) = &s.url else {
                return invalid(format!(
                    "source {}: no url\nhint: an upstream source needs url = \"http://…\" (or \
                     kind = \"local\" for a repository fed by `aptgate upload`)",
                    s.name
                ));
            };
            if !matches!(url.scheme(), "http" | "https") {
                return invalid(format!(
                    "source {}: url {url} must be http:// or https://",
                    s.name
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return invalid(format!(
                    "source {}: url {url} must not have a query or fragment",
                    s.name
                ));
            }
            if s.suites.is_empty() {
                return invalid(format!(
                    "source {}: list at least one suite, e.g. suites = [\"bookworm\"]",
                    s.name
                ));
            }
            if s.keyring.is_empty() && s.inline_keys.is_empty() {
                return invalid(format!(
                    "source {}: no keyring; its InRelease could never be verified \
                     (set keyring = [\"/usr/share/keyrings/….gpg\"])",
                    s.name
                ));
            }
        }
        let mut channels = std::collections::HashSet::new();
        for c in &self.channels {
            if !channels.insert(c.name.as_str()) {
                return invalid(format!("channel name {:?} is used twice", c.name.as_str()));
            }
        }
        for c in &self.channels {
            if let Some(from) = &c.promotes_from {
                if !channels.contains(from.as_str()) {
                    return invalid(format!(
                        "channel {}: promotes_from = {from:?} names no configured channel",
                        c.name
                    ));
                }
                if from == &c.name {
                    return invalid(format!("channel {}: cannot promote from itself", c.name));
                }
            }
            let mut followed = std::collections::HashSet::new();
            for source in &c.follows {
                if !followed.insert(source.as_str()) {
                    return invalid(format!(
                        "channel {}: follows names {source:?} twice",
                        c.name
                    ));
                }
                // Sources imported from the host are not known yet; check configured ones.
                if !self.sources.is_empty() && !seen.contains(source.as_str()) {
                    return invalid(format!(
                        "channel {}: follows = {source:?} names no configured source",
                        c.name
                    ));
                }
            }
        }
        let url = &self.database.url;
        if !(url.is_empty()
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return invalid(
                "database.url must be empty (SQLite in the data directory), sqlite://PATH or \
                 postgres://USER@HOST/DB"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A local source (`kind = "local"`): fed by uploads, so it has no URL or keys, and names the
/// suites, components and architectures uploads may go to.
fn validate_local(s: &crate::SourceConfig) -> Result<(), ConfigError> {
    let invalid = |message: String| Err(ConfigError::Invalid { message });
    if s.url.is_some()
        || !s.keyring.is_empty()
        || !s.inline_keys.is_empty()
        || !s.fallback.is_empty()
    {
        return invalid(format!(
            "source {}: a local source has no url, keyring, inline_keys or fallback\nhint: its \
             packages are uploaded with `aptgate upload FILE.deb --to {}`",
            s.name, s.name
        ));
    }
    for (what, list, example) in [
        ("suite", &s.suites, "stable"),
        ("component", &s.components, "main"),
        ("architecture", &s.architectures, "amd64"),
    ] {
        if list.is_empty() {
            return invalid(format!(
                "source {}: a local source lists at least one {what}, e.g. [\"{example}\"]",
                s.name
            ));
        }
        // They become directory names in the channel's dists/ and pool/.
        if let Some(bad) = list.iter().find(|v| !crate::names::is_path_word(v)) {
            return invalid(format!(
                "source {}: {what} {bad:?} must be lowercase letters, digits, '.', '-' or '_'",
                s.name
            ));
        }
    }
    if s.architectures.iter().any(|a| a == "all") {
        return invalid(format!(
            "source {}: list real architectures; packages of architecture all go to every one",
            s.name
        ));
    }
    Ok(())
}
