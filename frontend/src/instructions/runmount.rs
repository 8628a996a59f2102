//! `RUN --mount=type=...,target=...` specs (BuildKit's `commands_runmount.go`).

/// What kind of mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A path from the context or another stage (read-only unless `rw`).
    Bind,
    /// A persistent cache directory kept in the store by id.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A secret file from `kiln build --secret`.
    Secret,
    /// An SSH agent socket.
    Ssh,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Used by all writers at once.
    Shared,
    /// A new copy for each concurrent writer.
    Private,
    /// One writer at a time.
    Locked,
}

/// One parsed `--mount`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Mount {
    /// Kind.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Where it appears in the container (secrets default to `/run/secrets/<id>`).
    pub target: String,
    /// Path inside `from` (or the context).
    pub source: Option<String>,
    /// A stage or image to take the source from (bind, cache).
    pub from: Option<String>,
    /// Read-only.
    pub readonly: bool,
    /// Cache or secret id.
    pub id: Option<String>,
    /// Cache sharing mode.
    pub sharing: Sharing,
    /// File mode (octal) for cache and secret mounts.
    pub mode: Option<u32>,
    /// Owner uid.
    pub uid: Option<u32>,
    /// Owner gid.
    pub gid: Option<u32>,
    /// Fail when the secret or ssh socket is not provided.
    pub required: bool,
    /// tmpfs size in bytes.
    pub size: Option<u64>,
    /// Secret exposed as this environment variable.
    pub env: Option<String>,
    /// The target is the default one (an ssh mount's is numbered by its place among
    /// the RUN's ssh mounts, `/run/buildkit/ssh_agent.N`, as BuildKit does).
    #[serde(skip)]
    pub default_target: bool,
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, String> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(format!(
            "invalid value for {key}: {other:?} (expected true or false)"
        )),
    }
}

fn split_csv(spec: &str) -> Result<Vec<String>, String> {
    // encoding/csv semantics for one record: fields separated by `,`, a field may be
    // wrapped in double quotes with `""` for a literal quote.
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = spec.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if at_field_start && c == '"' {
            at_field_start = false;
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    Some('"') => break,
                    Some(c) => cur.push(c),
                    None => return Err(format!("unterminated quote in mount spec {spec:?}")),
                }
            }
            continue;
        }
        at_field_start = false;
        if c == ',' {
            fields.push(std::mem::take(&mut cur));
            at_field_start = true;
        } else {
            cur.push(c);
        }
    }
    fields.push(cur);
    Ok(fields)
}

fn parse_size(v: &str) -> Result<u64, String> {
    let lower = v.to_ascii_lowercase();
    let (num, mult) = match lower.trim_end_matches('b').char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1u64 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {v:?}"))
}

/// Parses one `--mount` value.
pub fn parse_mount(spec: &str) -> Result<Mount, String> {
    let mut m = Mount {
        kind: MountType::Bind,
        target: String::new(),
        source: None,
        from: None,
        readonly: false,
        id: None,
        sharing: Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        size: None,
        env: None,
        default_target: false,
    };
    let fields = split_csv(spec)?;
    // The type decides the defaults of the other keys, so read it first.
    for field in &fields {
        if let Some(("type", v)) = field.split_once('=').map(|(k, v)| (k.trim(), v)) {
            m.kind = match v.to_ascii_lowercase().as_str() {
                "bind" => MountType::Bind,
                "cache" => MountType::Cache,
                "tmpfs" => MountType::Tmpfs,
                "secret" => MountType::Secret,
                "ssh" => MountType::Ssh,
                other => return Err(format!("unsupported mount type {other:?}")),
            };
        }
    }
    let mut rw_set = false;
    for field in &fields {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let need = |v: Option<&str>| {
            v.map(str::to_string).ok_or_else(|| {
                format!("invalid field {field:?} in mount spec: a value is required")
            })
        };
        let num = |v: Option<&str>, radix: u32| -> Result<u32, String> {
            let s = need(v)?;
            u32::from_str_radix(&s, radix).map_err(|_| format!("invalid number in {field:?}"))
        };
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => m.target = need(value)?,
            "source" | "src" => m.source = Some(need(value)?),
            "from" => m.from = Some(need(value)?),
            "readonly" | "ro" => {
                m.readonly = parse_bool(&key, value)?;
                rw_set = true;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_bool(&key, value)?;
                rw_set = true;
            }
            "id" => m.id = Some(need(value)?),
            "sharing" => {
                m.sharing = match need(value)?.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => return Err(format!("unsupported sharing value {other:?}")),
                }
            }
            "mode" => m.mode = Some(num(value, 8)?),
            "uid" => m.uid = Some(num(value, 10)?),
            "gid" => m.gid = Some(num(value, 10)?),
            "required" => m.required = parse_bool(&key, value)?,
            "size" => m.size = Some(parse_size(&need(value)?)?),
            "env" => m.env = Some(need(value)?),
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    if !rw_set && m.kind == MountType::Bind {
        m.readonly = true;
    }
    match m.kind {
        MountType::Secret | MountType::Ssh => {
            if m.kind == MountType::Secret && m.id.is_none() {
                m.id = m
                    .target
                    .rsplit('/')
                    .next()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                if m.id.is_none() {
                    return Err("secret mount requires an id or a target".to_string());
                }
            }
            if m.target.is_empty() && m.env.is_none() {
                m.default_target = true;
                m.target = match m.kind {
                    MountType::Secret => format!("/run/secrets/{}", m.id.as_deref().unwrap_or("")),
                    _ => "/run/buildkit/ssh_agent.0".to_string(),
                };
            }
        }
        _ => {
            if m.target.is_empty() {
                return Err(format!("mount spec {spec:?} has no target"));
            }
        }
    }
    if m.kind == MountType::Cache && m.id.is_none() {
        m.id = Some(m.target.clone());
    }
    if m.kind != MountType::Cache && m.sharing != Sharing::Shared {
        return Err("sharing is only allowed for cache mounts".to_string());
    }
    if m.kind == MountType::Tmpfs && m.from.is_some() {
        return Err("from is not allowed for tmpfs mounts".to_string());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let m = parse_mount("type=cache,target=/root/.cache").unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert_eq!(m.id.as_deref(), Some("/root/.cache"));
        assert!(!m.readonly);
        let b = parse_mount("target=/src,source=.").unwrap();
        assert_eq!(b.kind, MountType::Bind);
        assert!(b.readonly);
        assert!(!parse_mount("type=bind,target=/src,rw").unwrap().readonly);
        let s = parse_mount("type=secret,id=npmrc").unwrap();
        assert_eq!(s.target, "/run/secrets/npmrc");
    }

    #[test]
    fn errors() {
        assert!(
            parse_mount("type=foo,target=/x")
                .unwrap_err()
                .contains("unsupported mount type")
        );
        assert!(parse_mount("type=cache").unwrap_err().contains("no target"));
        assert!(
            parse_mount("target=/x,bogus=1")
                .unwrap_err()
                .contains("unexpected key")
        );
        assert!(parse_mount("type=cache,target=/x,sharing=weird").is_err());
        assert!(parse_mount("type=tmpfs,target=/x,sharing=locked").is_err());
        assert_eq!(
            parse_mount("type=tmpfs,target=/x,size=64m").unwrap().size,
            Some(64 << 20)
        );
    }

    #[test]
    fn quoted_fields() {
        let m = parse_mount("type=bind,\"target=/a,b\",source=x").unwrap();
        assert_eq!(m.target, "/a,b");
    }
}
