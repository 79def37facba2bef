//! Typed configuration: TOML file, `MDINGEST__SECTION__KEY` overrides, the vendors' own key
//! variables, defaults. Every error names the key as the operator wrote it.
//!
//! Precedence, highest first: `MDINGEST__…` variables, `POLYGON_API_KEY` / `APCA_API_KEY_ID` /
//! `APCA_API_SECRET_KEY`, the file, the defaults below.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::{DataSource, Symbol, Timeframe};
pub use crate::sources::alpaca::config::AlpacaConfig;
pub use crate::sources::polygon::config::PolygonConfig;
pub use crate::sources::yahoo::config::YahooConfig;

pub const ENV_PREFIX: &str = "MDINGEST__";
pub const DEFAULT_CONFIG_PATH: &str = "config/mdingest.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} not found (set --config or MDINGEST_CONFIG)", crate::text::path(.0))]
    FileMissing(PathBuf),
    #[error("config path {} is a directory, not a file", crate::text::path(.0))]
    NotAFile(PathBuf),
    #[error("cannot read config file {}: {reason}", crate::text::path(.path))]
    Unreadable { path: PathBuf, reason: String },
    #[error("config: {key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// A credential. Its `Debug`, `Display` and `Serialize` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
    fn shown(&self) -> &'static str {
        if self.is_set() {
            "REDACTED"
        } else {
            ""
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Scalar::deserialize(d).map(|s| Secret(s.0))
    }
}

/// Environment values are parsed as TOML-ish values, so a numeric key such as `12345` arrives as
/// an integer: accept any scalar where a string is meant.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            I(i64),
            U(u64),
            F(f64),
            B(bool),
        }
        Ok(Scalar(match Any::deserialize(d)? {
            Any::S(s) => s,
            Any::I(i) => i.to_string(),
            Any::U(u) => u.to_string(),
            Any::F(f) => f.to_string(),
            Any::B(b) => b.to_string(),
        }))
    }
}

/// A URL that may carry a password; shown with the password replaced.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Replaces every password in a connection string with `REDACTED`: the `user:pw@` of a URL, a
/// `password=`/`pass=` query parameter, and the `password=` of a libpq key/value string (quoted
/// or not).
pub fn redact_url(raw: &str) -> String {
    if let Ok(mut u) = url::Url::parse(raw) {
        if u.password().is_some() {
            let _ = u.set_password(Some("REDACTED"));
        }
        if u.query().is_some() {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_password_key(&k) {
                        "REDACTED".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return u.to_string();
    }
    if let Some((scheme, rest)) = raw.split_once("://") {
        return redact_unparsed_url(scheme, rest);
    }
    redact_key_values(raw)
}

/// A URL the `url` crate cannot parse (several `host:port`s, an unencoded `/` or `#` in the
/// password) that PostgreSQL may still accept. Errs towards hiding too much: everything before
/// the last `@` but the user name, and password parameters of the query.
fn redact_unparsed_url(scheme: &str, rest: &str) -> String {
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}:REDACTED@{host}")
        }
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_password_key(k) => format!("{k}=REDACTED"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
}

fn is_password_key(k: &str) -> bool {
    matches!(
        k.to_ascii_lowercase().as_str(),
        "password" | "pass" | "passwd" | "pwd"
    )
}

/// `host=h password='a b' user=u` → `host=h password=REDACTED user=u`. Anything that does not
/// parse as key/value pairs is redacted whole, since it may hold a password we cannot find.
fn redact_key_values(raw: &str) -> String {
    let mut out = Vec::new();
    let mut rest = raw.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            return "REDACTED".into();
        };
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return "REDACTED".into();
        }
        let after = rest[eq + 1..].trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('\'') {
            // libpq: single quotes, backslash escapes.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '\'') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else {
                return "REDACTED".into();
            };
            (&after[..end + 2], &quoted[end + 1..])
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if is_password_key(key) {
            out.push(format!("{key}=REDACTED"));
        } else {
            out.push(format!("{key}={value}"));
        }
        rest = tail.trim_start();
    }
    out.join(" ")
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub service: ServiceConfig,
    pub log: LogConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub pipeline: PipelineConfig,
    pub metrics: MetricsConfig,
    pub sources: SourcesConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    pub name: String,
    pub shutdown_timeout_secs: u64,
    pub gap_fill_lookback_secs: u64,
    /// A streamed bar older than this before its connection began is a quality record, not a
    /// row (streams carry current bars; history comes through REST). Raised only to replay
    /// history through a simulator (the stream benchmark).
    pub stream_max_bar_age_secs: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            name: "data_ingestion".into(),
            shutdown_timeout_secs: 20,
            gap_fill_lookback_secs: 86_400,
            stream_max_bar_age_secs: 86_400,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: SecretUrl,
    pub pool_max_size: usize,
    pub pool_recycle_secs: u64,
    /// How `migrate` creates `market_data`; an existing table keeps its layout (see
    /// `migrate --to-partitioned`).
    pub partitioning: Partitioning,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: SecretUrl("postgres://postgres@127.0.0.1:5432/trading_system".into()),
            pool_max_size: 30,
            pool_recycle_secs: 3600,
            partitioning: Partitioning::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    /// The seed's plain table.
    None,
    /// Partitioned by range of `timestamp`, one partition per UTC month.
    Monthly,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: SecretUrl,
    pub channel_prefix: String,
    /// Also append every event to the Redis Stream `<channel_prefix>:events`, trimmed to about
    /// this many entries (`XADD … MAXLEN ~ N`); 0 (the default) publishes on the channels only.
    pub stream_maxlen: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: SecretUrl("redis://127.0.0.1:6379".into()),
            channel_prefix: "data_sync".into(),
            stream_maxlen: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub batch_max_rows: usize,
    pub batch_max_age_ms: u64,
    pub queue_capacity: usize,
    pub writers: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_max_rows: 10_000,
            batch_max_age_ms: 250,
            queue_capacity: 200_000,
            writers: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9187".into(),
        }
    }
}

/// A section that is absent means the source does not run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polygon: Option<PolygonConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpaca: Option<AlpacaConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yahoo: Option<YahooConfig>,
}

pub(crate) fn default_symbols(s: &[&str]) -> Vec<Symbol> {
    s.iter().filter_map(|s| s.parse().ok()).collect()
}

/// A TOML array, or (handy in an environment variable) one comma-separated string.
pub(crate) fn symbol_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Symbol>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    let items = match List::deserialize(d)? {
        List::One(s) => s.split(',').map(|s| s.trim().to_string()).collect(),
        List::Many(v) => v,
    };
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<Symbol>().map_err(serde::de::Error::custom))
        .collect()
}

/// A vendor's section, `sources.<NAME>`, validated beside its vendor (`sources/<vendor>/config.rs`).
pub trait SourceSection {
    const NAME: &'static str;
    /// The vendor's own environment variables and the keys they fill (`POLYGON_API_KEY`).
    const ENV: &'static [(&'static str, &'static str)] = &[];
    fn enabled(&self) -> bool;
    /// Checks serde cannot express; returns the dotted key and the reason.
    fn validate(&self) -> Result<(), (String, String)>;
    /// Every credential the vendor needs is set (checked by the commands that talk to it).
    fn check_credentials(&self) -> Result<(), (String, String)> {
        Ok(())
    }
    /// The credentials by dotted key, to re-read verbatim from the environment.
    fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        Vec::new()
    }
}

impl SourcesConfig {
    /// Runs `f` on every configured section.
    fn each(
        &self,
        mut f: impl FnMut(&dyn SectionView) -> Result<(), (String, String)>,
    ) -> Result<(), (String, String)> {
        if let Some(s) = &self.polygon {
            f(s)?;
        }
        if let Some(s) = &self.alpaca {
            f(s)?;
        }
        if let Some(s) = &self.yahoo {
            f(s)?;
        }
        Ok(())
    }

    fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        let mut out = Vec::new();
        if let Some(s) = self.polygon.as_mut() {
            out.extend(s.secrets_mut());
        }
        if let Some(s) = self.alpaca.as_mut() {
            out.extend(s.secrets_mut());
        }
        if let Some(s) = self.yahoo.as_mut() {
            out.extend(s.secrets_mut());
        }
        out
    }

    /// Every vendor's own environment variables: (section, variable, dotted key).
    fn vendor_vars() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
        let of = |name: &'static str, env: &'static [(&'static str, &'static str)]| {
            env.iter().map(move |(var, key)| (name, *var, *key))
        };
        of(PolygonConfig::NAME, PolygonConfig::ENV)
            .chain(of(AlpacaConfig::NAME, AlpacaConfig::ENV))
            .chain(of(YahooConfig::NAME, YahooConfig::ENV))
    }
}

/// What `Config` asks of a section without knowing its type.
trait SectionView {
    fn enabled(&self) -> bool;
    fn validate(&self) -> Result<(), (String, String)>;
    fn check_credentials(&self) -> Result<(), (String, String)>;
}

impl<T: SourceSection> SectionView for T {
    fn enabled(&self) -> bool {
        SourceSection::enabled(self)
    }
    fn validate(&self) -> Result<(), (String, String)> {
        SourceSection::validate(self)
    }
    fn check_credentials(&self) -> Result<(), (String, String)> {
        SourceSection::check_credentials(self)
    }
}

/// `v` is within `1..=max`. Upper bounds keep a typo (an extra digit or three) from becoming an
/// allocation or a timer that cannot be honoured.
pub(crate) fn within(key: &str, v: u64, max: u64) -> Result<(), (String, String)> {
    if v == 0 {
        Err((key.to_string(), "must be greater than 0".into()))
    } else if v > max {
        Err((
            key.to_string(),
            format!("{v} is larger than the most this accepts ({max})"),
        ))
    } else {
        Ok(())
    }
}

/// The configured timeframe of each data source; `market_data` holds one timeframe per source.
#[derive(Debug, Clone, Copy)]
pub struct Timeframes {
    pub polygon: Timeframe,
    pub alpaca: Timeframe,
    pub yahoo: Timeframe,
}

impl Timeframes {
    pub fn of(&self, source: DataSource) -> Timeframe {
        match source {
            DataSource::Polygon => self.polygon,
            DataSource::Alpaca => self.alpaca,
            DataSource::Yahoo | DataSource::YahooAdjusted => self.yahoo,
        }
    }
}

impl Default for Timeframes {
    fn default() -> Self {
        Timeframes {
            polygon: PolygonConfig::default().timeframe,
            alpaca: AlpacaConfig::default().timeframe,
            yahoo: YahooConfig::default().timeframe,
        }
    }
}

impl Config {
    /// Loads `path` (which must exist), layers the environment over it and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::FileMissing(path.to_path_buf()))
            }
            Ok(m) if m.is_dir() => return Err(ConfigError::NotAFile(path.to_path_buf())),
            _ => {}
        }
        // figment reports an unreadable file with an empty reason; say what the OS said.
        if let Err(e) = std::fs::File::open(path) {
            return Err(ConfigError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
        Self::from_figment(Figment::from(Toml::file(path)))
    }

    /// Builds from TOML text (tests, embedded defaults) with the environment layered over it.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)))
    }

    fn from_figment(file: Figment) -> Result<Config, ConfigError> {
        let mut fig = file;
        // A vendor variable fills a source's key only when the operator configured that source:
        // an exported POLYGON_API_KEY must not switch on a source the file leaves out.
        let overrides = Figment::from(Env::prefixed(ENV_PREFIX).split("__"));
        let configured = |section: &str| {
            fig.find_value(&format!("sources.{section}")).is_ok()
                || overrides.find_value(&format!("sources.{section}")).is_ok()
        };
        let mut vendor = Figment::new();
        for (section, var, key) in SourcesConfig::vendor_vars() {
            if configured(section) {
                vendor = vendor.merge(Env::raw().only(&[var]).map(move |_| key.into()));
            }
        }
        fig = fig
            .merge(vendor)
            .merge(Env::prefixed(ENV_PREFIX).split("__"));
        let mut config: Config = fig.extract().map_err(|e| figment_error(&fig, e))?;
        config.take_raw_secrets(&fig);
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                key: describe_key(&fig, &key),
                reason,
            })?;
        Ok(config)
    }

    /// figment parses environment values, so a key like `0123` or `1e5` would arrive as a
    /// number and be re-printed altered; credentials set from the environment are re-read
    /// verbatim.
    fn take_raw_secrets(&mut self, fig: &Figment) {
        let raw = |dotted: &str| {
            let md = fig.find_metadata(dotted)?;
            if !md.name.contains("environment") {
                return None;
            }
            let var = describe_key(fig, dotted);
            std::env::var(var).ok()
        };
        for (key, secret) in self.sources.secrets_mut() {
            if let Some(v) = raw(key) {
                *secret = Secret(v);
            }
        }
    }

    pub fn timeframes(&self) -> Timeframes {
        let d = Timeframes::default();
        Timeframes {
            polygon: self
                .sources
                .polygon
                .as_ref()
                .map_or(d.polygon, |s| s.timeframe),
            alpaca: self
                .sources
                .alpaca
                .as_ref()
                .map_or(d.alpaca, |s| s.timeframe),
            yahoo: self.sources.yahoo.as_ref().map_or(d.yahoo, |s| s.timeframe),
        }
    }

    /// Every enabled source has its credentials. Checked by the commands that talk to vendors
    /// (`run`, `backfill`, `check-config`), not by `migrate`, `status` or `import`, which need
    /// none: a machine that only migrates has no business holding a vendor's key.
    pub fn check_credentials(&self) -> Result<(), ConfigError> {
        self.sources
            .each(|s| {
                if s.enabled() {
                    s.check_credentials()
                } else {
                    Ok(())
                }
            })
            .map_err(|(key, reason)| ConfigError::Invalid { key, reason })
    }

    /// The resolved configuration as TOML, every secret redacted (`check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Checks that serde cannot express; returns the dotted key and the reason.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: String| Err((key.to_string(), reason));
        if self.service.name.trim().is_empty() {
            return bad("service.name", "must not be empty".into());
        }
        within(
            "service.shutdown_timeout_secs",
            self.service.shutdown_timeout_secs,
            3_600,
        )?;
        within(
            "service.gap_fill_lookback_secs",
            self.service.gap_fill_lookback_secs,
            10 * 366 * 86_400,
        )?;
        within(
            "service.stream_max_bar_age_secs",
            self.service.stream_max_bar_age_secs,
            10 * 366 * 86_400,
        )?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad("log.level", format!("{e}"));
        }
        let url = crate::db::tls::split(self.database.url.expose()).and_then(|s| {
            s.url
                .parse::<tokio_postgres::Config>()
                .map_err(|e| e.to_string())
        });
        if let Err(e) = url {
            return bad(
                "database.url",
                format!("not a PostgreSQL URL ({})", redact_url(&e)),
            );
        }
        within(
            "database.pool_max_size",
            self.database.pool_max_size as u64,
            1_000,
        )?;
        within(
            "database.pool_recycle_secs",
            self.database.pool_recycle_secs,
            7 * 86_400,
        )?;
        check_url(
            "redis.url",
            self.redis.url.expose(),
            &["redis", "rediss", "unix"],
        )?;
        within(
            "pipeline.batch_max_rows",
            self.pipeline.batch_max_rows as u64,
            1_000_000,
        )?;
        within(
            "pipeline.batch_max_age_ms",
            self.pipeline.batch_max_age_ms,
            3_600_000,
        )?;
        within(
            "pipeline.queue_capacity",
            self.pipeline.queue_capacity as u64,
            50_000_000,
        )?;
        within("pipeline.writers", self.pipeline.writers as u64, 64)?;
        if self.pipeline.writers > self.database.pool_max_size {
            return bad(
                "pipeline.writers",
                format!(
                    "{} writers need at least as many pooled connections (database.pool_max_size = {})",
                    self.pipeline.writers, self.database.pool_max_size
                ),
            );
        }
        if self.metrics.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "metrics.listen",
                format!("{:?} is not an address:port", self.metrics.listen),
            );
        }
        self.sources.each(|s| s.validate())
    }
}

/// What a `proxy_url` may be: an HTTP(S) proxy, or SOCKS5 (`socks5h`: names resolved by the
/// proxy).
pub(crate) const PROXY_SCHEMES: &[&str] = &["http", "https", "socks5", "socks5h"];

pub(crate) fn check_url(key: &str, raw: &str, schemes: &[&str]) -> Result<(), (String, String)> {
    match url::Url::parse(raw) {
        Ok(u) if schemes.contains(&u.scheme()) => Ok(()),
        Ok(u) => Err((
            key.to_string(),
            format!(
                "scheme {:?} is not one of {}",
                u.scheme(),
                schemes.join(", ")
            ),
        )),
        // The value is not echoed: a malformed URL may still carry a credential.
        Err(e) => Err((key.to_string(), format!("not a URL ({e})"))),
    }
}

pub(crate) fn check_symbols(key: &str, symbols: &[Symbol]) -> Result<(), (String, String)> {
    if symbols.is_empty() {
        return Err((
            key.to_string(),
            "an enabled source needs at least one symbol".into(),
        ));
    }
    Ok(())
}

/// Names a dotted key as the operator wrote it: the environment variable that set it, or the
/// key and the file it came from.
fn describe_key(fig: &Figment, dotted: &str) -> String {
    let parts: Vec<&str> = dotted.split('.').collect();
    match fig.find_metadata(dotted) {
        Some(md) if md.name.contains(ENV_PREFIX) => {
            format!("{ENV_PREFIX}{}", parts.join("__").to_uppercase())
        }
        // The vendors' own variables, each mapped from one fixed name.
        Some(md) if md.name.contains("environment") => SourcesConfig::vendor_vars()
            .find(|(_, _, key)| *key == dotted)
            .map_or_else(|| dotted.to_string(), |(_, var, _)| var.to_string()),
        Some(md) => match &md.source {
            Some(figment::Source::File(p)) => format!("{dotted} (in {})", p.display()),
            _ => dotted.to_string(),
        },
        None => dotted.to_string(),
    }
}

fn figment_error(fig: &Figment, e: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = e.path.clone();
    let reason = match &e.kind {
        Kind::UnknownField(name, expected) => {
            if path.last() != Some(name) {
                path.push(name.clone());
            }
            if expected.is_empty() {
                "unknown key".to_string()
            } else {
                format!("unknown key (expected one of: {})", expected.join(", "))
            }
        }
        other => redact_reason(&path, other.to_string()),
    };
    let dotted = path.join(".");
    if dotted.is_empty() {
        // A syntax error: the parser's message quotes the offending line, which may hold a
        // secret (an unquoted key, a URL with its password). Keep only where it is and what.
        let text = e.kind.to_string();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let location = lines.next().unwrap_or("cannot parse").to_string();
        let what: Vec<&str> = lines
            .filter(|l| {
                !l.starts_with('|') && !l.chars().next().is_some_and(|c| c.is_ascii_digit())
            })
            .collect();
        let file = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ => "the configuration".into(),
        };
        return ConfigError::Invalid {
            key: file,
            reason: format!("{location}: {}", what.join("; ")),
        };
    }
    ConfigError::Invalid {
        key: describe_key(fig, &dotted),
        reason,
    }
}

/// A type error echoes the offending value; never echo a credential's.
fn redact_reason(path: &[String], reason: String) -> String {
    let secret = path
        .last()
        .is_some_and(|k| matches!(k.as_str(), "api_key" | "key_id" | "secret_key" | "url"));
    if secret {
        "invalid value (not shown: it may be a secret)".into()
    } else {
        reason
    }
}

/// Where the configuration file is read from: `--config`, else `MDINGEST_CONFIG`, else the default.
pub fn resolve_path(cli: Option<PathBuf>) -> PathBuf {
    cli.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_wherever_they_hide() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:REDACTED@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?password=pw&sslmode=require"),
            "postgres://u@h/db?password=REDACTED&sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379/0"),
            "redis://:REDACTED@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("unix:///run/redis.sock?pass=pw"),
            "unix:///run/redis.sock?pass=REDACTED"
        );
        assert_eq!(
            redact_url("host=h password='a b\\' c' user=u"),
            "host=h password=REDACTED user=u"
        );
        assert_eq!(redact_url("host=h password=pw"), "host=h password=REDACTED");
        assert_eq!(redact_url("host=h password='unterminated"), "REDACTED");
        assert_eq!(redact_url("not a connection string"), "REDACTED");
        assert_eq!(
            redact_url("postgres://u:p/w#d@h1:5432,h2:5432/db?sslmode=require&password=x"),
            "postgres://u:REDACTED@h1:5432,h2:5432/db?sslmode=require&password=REDACTED"
        );
    }
}
