//! Builder flags (`--from=x`, `--link`, `--mount=...`) declared per instruction and
//! validated: unknown flags, repeated flags, missing values and bad booleans are errors.

use std::collections::BTreeMap;

/// The kind of value a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--link` or `--link=true|false`.
    Bool,
    /// `--from=x`, at most once.
    String,
    /// `--mount=...`, any number of times.
    List,
}

/// Parsed flag values of one instruction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    bools: BTreeMap<&'static str, bool>,
    strings: BTreeMap<&'static str, String>,
    lists: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    /// Parses `raw` (`--name[=value]` strings) against the allowed `spec`.
    /// The error names the offending flag.
    pub fn parse(
        raw: &[String],
        spec: &[(&'static str, FlagKind)],
    ) -> Result<Flags, (String, String)> {
        let mut flags = Flags::default();
        for arg in raw {
            let Some(body) = arg.strip_prefix("--") else {
                return Err((arg.clone(), format!("arg should start with -- : {arg}")));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(key, kind)) = spec.iter().find(|(n, _)| *n == name) else {
                return Err((arg.clone(), format!("unknown flag: --{name}")));
            };
            let repeated = flags.bools.contains_key(key) || flags.strings.contains_key(key);
            match kind {
                FlagKind::Bool => {
                    if repeated {
                        return Err((arg.clone(), format!("duplicate flag specified: --{name}")));
                    }
                    let v = match value.map(str::to_ascii_lowercase).as_deref() {
                        None | Some("true") => true,
                        Some("false") => false,
                        Some(other) => {
                            return Err((
                                arg.clone(),
                                format!("expecting boolean value for flag --{name}, not: {other}"),
                            ));
                        }
                    };
                    flags.bools.insert(key, v);
                }
                FlagKind::String => {
                    if repeated {
                        return Err((arg.clone(), format!("duplicate flag specified: --{name}")));
                    }
                    let Some(v) = value else {
                        return Err((arg.clone(), format!("missing a value on flag: --{name}")));
                    };
                    flags.strings.insert(key, v.to_string());
                }
                FlagKind::List => {
                    let Some(v) = value else {
                        return Err((arg.clone(), format!("missing a value on flag: --{name}")));
                    };
                    flags.lists.entry(key).or_default().push(v.to_string());
                }
            }
        }
        Ok(flags)
    }

    /// A boolean flag's value (false when absent).
    pub fn bool(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }

    /// A string flag's value.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.strings.get(name).map(String::as_str)
    }

    /// A list flag's values, in order.
    pub fn list(&self, name: &str) -> &[String] {
        self.lists.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &[(&str, FlagKind)] = &[
        ("from", FlagKind::String),
        ("link", FlagKind::Bool),
        ("exclude", FlagKind::List),
    ];

    fn parse(raw: &[&str]) -> Result<Flags, String> {
        let raw: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
        Flags::parse(&raw, SPEC).map_err(|(_, m)| m)
    }

    #[test]
    fn values() {
        let f = parse(&["--from=a", "--link", "--exclude=x", "--exclude=y"]).unwrap();
        assert_eq!(f.string("from"), Some("a"));
        assert!(f.bool("link"));
        assert_eq!(f.list("exclude"), ["x", "y"]);
        assert!(!parse(&["--link=false"]).unwrap().bool("link"));
    }

    #[test]
    fn errors() {
        assert_eq!(parse(&["--doit"]).unwrap_err(), "unknown flag: --doit");
        assert_eq!(
            parse(&["--from=a", "--from=b"]).unwrap_err(),
            "duplicate flag specified: --from"
        );
        assert_eq!(
            parse(&["--from"]).unwrap_err(),
            "missing a value on flag: --from"
        );
        assert!(parse(&["--link=maybe"]).unwrap_err().contains("boolean"));
    }
}
