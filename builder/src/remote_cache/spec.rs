//! `--cache-to` and `--cache-from`, in BuildKit's syntax.

use std::path::PathBuf;

use super::format::DEFAULT_MAX_RECORDS;

/// Where a cache lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheLocation {
    /// `type=registry,ref=REF`: an image reference.
    Registry(String),
    /// `type=local,dest=DIR` / `src=DIR`: an OCI layout directory.
    Local(PathBuf),
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Registry(r) => f.write_str(r),
            CacheLocation::Local(d) => write!(f, "{}", d.display()),
        }
    }
}

/// Which records `--cache-to` exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// The steps whose results make up the final image (BuildKit's default).
    #[default]
    Min,
    /// Every step with a cache key, of every stage.
    Max,
}

/// `--cache-to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheToSpec {
    /// Where.
    pub location: CacheLocation,
    /// `mode=`.
    pub mode: CacheMode,
    /// `ignore-error=true`: a failed export is a warning.
    pub ignore_error: bool,
    /// `max-records=N`: the merged cache keeps the newest N.
    pub max_records: usize,
    /// `compression=`, if given (checked against the build's own).
    pub compression: Option<String>,
}

/// Why a `--cache-to`/`--cache-from` value is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {flag} {value:?}: {reason}")]
pub struct SpecError {
    /// `--cache-to` or `--cache-from`.
    pub flag: &'static str,
    /// The value as given.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

fn fields(flag: &'static str, s: &str) -> Result<Vec<(String, String)>, SpecError> {
    let err = |reason: String| SpecError {
        flag,
        value: s.to_string(),
        reason,
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for part in s.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(err(format!("{part:?} is not KEY=VALUE")));
        };
        if out.iter().any(|(o, _)| o == k) {
            return Err(err(format!("{k} given twice")));
        }
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

fn location(
    flag: &'static str,
    s: &str,
    f: &[(String, String)],
    dir_key: &str,
) -> Result<CacheLocation, SpecError> {
    let err = |reason: String| SpecError {
        flag,
        value: s.to_string(),
        reason,
    };
    let get = |k: &str| f.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
    match get("type") {
        Some("registry") => {
            let r = get("ref")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| err("type=registry needs ref=IMAGE".into()))?;
            crate::remote::parse_name(r).map_err(|e| err(format!("ref={r}: {e}")))?;
            Ok(CacheLocation::Registry(r.to_string()))
        }
        Some("local") => {
            let d = get(dir_key)
                .filter(|d| !d.is_empty())
                .ok_or_else(|| err(format!("type=local needs {dir_key}=DIR")))?;
            Ok(CacheLocation::Local(PathBuf::from(d)))
        }
        Some(t) => Err(err(format!(
            "unsupported cache type {t:?}: expected registry or local"
        ))),
        None => Err(err("missing type=registry or type=local".into())),
    }
}

impl CacheToSpec {
    /// Parses `type=registry,ref=REF[,mode=min|max][,ignore-error=true][,max-records=N]
    /// [,compression=C]` or `type=local,dest=DIR[,...]`.
    pub fn parse(s: &str) -> Result<CacheToSpec, SpecError> {
        const FLAG: &str = "--cache-to";
        let err = |reason: String| SpecError {
            flag: FLAG,
            value: s.to_string(),
            reason,
        };
        let f = fields(FLAG, s)?;
        let location = location(FLAG, s, &f, "dest")?;
        let mut spec = CacheToSpec {
            location,
            mode: CacheMode::Min,
            ignore_error: false,
            max_records: DEFAULT_MAX_RECORDS,
            compression: None,
        };
        for (k, v) in &f {
            match k.as_str() {
                "type" | "ref" | "dest" => {}
                "mode" => {
                    spec.mode = match v.as_str() {
                        "min" => CacheMode::Min,
                        "max" => CacheMode::Max,
                        _ => return Err(err(format!("mode={v}: expected min or max"))),
                    }
                }
                "ignore-error" => {
                    spec.ignore_error = v
                        .parse()
                        .map_err(|_| err(format!("ignore-error={v}: expected true or false")))?
                }
                "max-records" => {
                    spec.max_records =
                        v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            err(format!("max-records={v}: expected a positive count"))
                        })?
                }
                "compression" => spec.compression = Some(v.clone()),
                // Accepted for BuildKit compatibility; kiln's format needs neither.
                "image-manifest" | "oci-mediatypes" => {}
                _ => return Err(err(format!("unknown option {k:?}"))),
            }
        }
        Ok(spec)
    }

    /// Refuses a `compression=` other than the build's own layer compression: kiln
    /// compresses each layer once, when the step writes it.
    pub fn check_compression(&self, build: &str) -> Result<(), String> {
        match &self.compression {
            Some(c) if c != build => Err(format!(
                "--cache-to compression={c}: kiln compresses layers once, when a step writes \
                 them, and this build's layers are {build}; pass --compression {c} to the \
                 build instead"
            )),
            _ => Ok(()),
        }
    }
}

/// Parses `--cache-from type=registry,ref=REF` or `type=local,src=DIR`.
pub fn parse_cache_from(s: &str) -> Result<CacheLocation, SpecError> {
    const FLAG: &str = "--cache-from";
    let f = fields(FLAG, s)?;
    let loc = location(FLAG, s, &f, "src")?;
    if let Some((k, _)) = f
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "type" | "ref" | "src" | "digest"))
    {
        return Err(SpecError {
            flag: FLAG,
            value: s.to_string(),
            reason: format!("unknown option {k:?}"),
        });
    }
    Ok(loc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_to_parses_buildkit_syntax() {
        let s = CacheToSpec::parse(
            "type=registry,ref=localhost:5000/app:cache,mode=max,ignore-error=true,max-records=7",
        )
        .unwrap();
        assert_eq!(
            s,
            CacheToSpec {
                location: CacheLocation::Registry("localhost:5000/app:cache".into()),
                mode: CacheMode::Max,
                ignore_error: true,
                max_records: 7,
                compression: None,
            }
        );
        let s = CacheToSpec::parse("type=local,dest=/tmp/c").unwrap();
        assert_eq!(s.location, CacheLocation::Local("/tmp/c".into()));
        assert_eq!(s.mode, CacheMode::Min);
        assert_eq!(s.max_records, DEFAULT_MAX_RECORDS);
        assert!(!s.ignore_error);
    }

    #[test]
    fn cache_to_errors_name_the_problem() {
        let e = |s: &str| CacheToSpec::parse(s).unwrap_err().to_string();
        assert_eq!(
            e("type=registry"),
            "invalid --cache-to \"type=registry\": type=registry needs ref=IMAGE"
        );
        assert_eq!(
            e("type=local,src=/x"),
            "invalid --cache-to \"type=local,src=/x\": type=local needs dest=DIR"
        );
        assert_eq!(
            e("type=s3,ref=x"),
            "invalid --cache-to \"type=s3,ref=x\": unsupported cache type \"s3\": expected registry or local"
        );
        assert!(e("type=registry,ref=x,mode=all").contains("mode=all: expected min or max"));
        assert!(e("type=registry,ref=x,max-records=0").contains("expected a positive count"));
        assert!(e("type=registry,ref=x,color=red").contains("unknown option \"color\""));
        assert!(e("ref=x").contains("missing type=registry or type=local"));
        assert!(e("type=registry,ref=Bad/Name").contains("must be lowercase"));
        assert!(e("type=registry,ref").contains("is not KEY=VALUE"));
    }

    #[test]
    fn compression_must_be_the_builds() {
        let s = CacheToSpec::parse("type=registry,ref=x,compression=zstd").unwrap();
        assert!(s.check_compression("zstd").is_ok());
        let e = s.check_compression("gzip").unwrap_err();
        assert!(
            e.contains("compression=zstd") && e.contains("--compression zstd"),
            "{e}"
        );
    }

    #[test]
    fn cache_from_parses() {
        assert_eq!(
            parse_cache_from("type=registry,ref=r.io/a:b").unwrap(),
            CacheLocation::Registry("r.io/a:b".into())
        );
        assert_eq!(
            parse_cache_from("type=local,src=/c").unwrap(),
            CacheLocation::Local("/c".into())
        );
        assert!(
            parse_cache_from("type=local,dest=/c")
                .unwrap_err()
                .to_string()
                .contains("type=local needs src=DIR")
        );
        assert!(
            parse_cache_from("type=registry,ref=a,mode=max")
                .unwrap_err()
                .to_string()
                .contains("unknown option \"mode\"")
        );
    }
}
