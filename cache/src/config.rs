//! `config.toml` at the store root: the store's settings, one table per concern
//! (`[gc]`, `[records]`), read with the `toml` crate. Unknown tables and keys are errors
//! naming the file, line and column, so a typo does not silently keep a default.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{CacheError, Result};
use crate::gc::{GcConfig, SizeSpec};
use crate::records::RecordLimits;
use crate::store::Store;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreConfig {
    #[serde(default)]
    gc: GcTable,
    #[serde(default)]
    records: RecordsTable,
}

/// `[gc]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GcTable {
    max_used_space: Option<String>,
    min_free_space: Option<String>,
    reserved_space: Option<String>,
}

/// `[records]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RecordsTable {
    max_count: Option<usize>,
    max_age: Option<Age>,
}

/// `max-age = "30d"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Age {
    Seconds(u64),
    Text(String),
}

fn parse(text: &str) -> std::result::Result<StoreConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
}

fn gc_config(cfg: &GcTable) -> std::result::Result<GcConfig, String> {
    let size = |key: &str, v: &Option<String>| {
        v.as_deref()
            .map(|v| SizeSpec::parse(v).map_err(|e| format!("[gc] {key}: {e}")))
            .transpose()
    };
    Ok(GcConfig {
        max_used_space: size("max-used-space", &cfg.max_used_space)?,
        min_free_space: size("min-free-space", &cfg.min_free_space)?,
        reserved_space: size("reserved-space", &cfg.reserved_space)?,
    })
}

fn record_limits(cfg: &RecordsTable) -> std::result::Result<RecordLimits, String> {
    let mut limits = RecordLimits::default();
    if let Some(n) = cfg.max_count {
        limits.max_count = n;
    }
    match &cfg.max_age {
        None => {}
        Some(Age::Seconds(s)) => limits.max_age = Duration::from_secs(*s),
        Some(Age::Text(t)) => {
            limits.max_age = humantime::parse_duration(t)
                .map_err(|_| format!("[records] max-age is not a duration: {t:?}"))?
        }
    }
    Ok(limits)
}

impl Store {
    /// `config.toml` at the store root (settings shared by GC and build records).
    pub fn config_path(&self) -> PathBuf {
        self.root().join("config.toml")
    }

    fn config(&self) -> Result<StoreConfig> {
        let path = self.config_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(StoreConfig::default()),
            Err(e) => return Err(CacheError::io("read", &path, e)),
        };
        parse(&text).map_err(|reason| CacheError::Config { path, reason })
    }

    /// The `[gc]` table (empty when the file does not exist).
    pub fn gc_config(&self) -> Result<GcConfig> {
        let cfg = self.config()?;
        gc_config(&cfg.gc).map_err(|reason| CacheError::Config {
            path: self.config_path(),
            reason,
        })
    }

    /// The record limits of the `[records]` table (defaults for what it does not say).
    pub fn record_limits(&self) -> Result<RecordLimits> {
        let cfg = self.config()?;
        record_limits(&cfg.records).map_err(|reason| CacheError::Config {
            path: self.config_path(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_two_tables() {
        let cfg = parse(
            "# kiln\n[gc]\nmax-used-space = \"10GB\" # cap\nmin-free-space = '20%'\n\
             [records]\nmax-count = 5\nmax-age = \"2d\"\n",
        )
        .unwrap();
        let gc = gc_config(&cfg.gc).unwrap();
        assert_eq!(gc.max_used_space, Some(SizeSpec::Bytes(10 << 30)));
        assert_eq!(gc.min_free_space, Some(SizeSpec::Percent(20.0)));
        let l = record_limits(&cfg.records).unwrap();
        assert_eq!(l.max_count, 5);
        assert_eq!(l.max_age, Duration::from_secs(2 * 24 * 3600));
        let empty = parse("").unwrap();
        assert_eq!(gc_config(&empty.gc).unwrap(), GcConfig::default());
        assert_eq!(
            record_limits(&empty.records).unwrap(),
            RecordLimits::default()
        );
        let secs = parse("[records]\nmax-age = 60\n").unwrap();
        assert_eq!(
            record_limits(&secs.records).unwrap().max_age,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        let e = parse("[gc]\nmax-used = \"1GB\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("max-used"), "{e}");
        let e = parse("[other]\nx = 1\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("other"), "{e}");
        let cfg = parse("[gc]\nmin-free-space = \"lots\"\n").unwrap();
        let e = gc_config(&cfg.gc).unwrap_err();
        assert!(e.contains("min-free-space") && e.contains("lots"), "{e}");
        let cfg = parse("[records]\nmax-age = \"soon\"\n").unwrap();
        assert!(record_limits(&cfg.records).is_err());
    }

    #[test]
    fn the_store_reads_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.gc_config().unwrap(), GcConfig::default());
        assert_eq!(store.record_limits().unwrap(), RecordLimits::default());
        fs::write(
            store.config_path(),
            "[gc]\nmax-used-space = \"1MB\"\n[records]\nmax-count = 3\n",
        )
        .unwrap();
        assert_eq!(
            store.gc_config().unwrap().max_used_space,
            Some(SizeSpec::Bytes(1 << 20))
        );
        assert_eq!(store.record_limits().unwrap().max_count, 3);
        fs::write(store.config_path(), "[gc\n").unwrap();
        let e = store.gc_config().unwrap_err().to_string();
        assert!(
            e.starts_with("invalid ") && e.contains("config.toml") && e.contains("line 1"),
            "{e}"
        );
    }
}
