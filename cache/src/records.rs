//! Build records: what each build did, step by step, kept in `records/` so that a
//! later build can say why a step missed the cache (the builder's `explain` module) and
//! `kiln builds` can list them.
//!
//! A record is JSON compressed with zstd, `records/<id>.json.zst`, written atomically.
//! Ids sort by time (`<13 hex digits of Unix milliseconds><4 hex digits>`), so the
//! newest record is the last name. The per-file fingerprints of a COPY are the bulk of
//! a record: they are stored as compact arrays, sorted by path with each path coded as
//! the length of the prefix it shares with the previous one plus the rest, so 20,000
//! files cost well under 2 MB (the content hashes, incompressible, are most of it).
//!
//! How many records are kept: [`RecordLimits`] (count and age), read from the `[records]`
//! table of `$KILN_ROOT/config.toml` (`max-count = 50`, `max-age = "30d"`) if present.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{CacheError, IoContext, Result};
use crate::store::Store;

/// The record format's version.
pub const RECORD_VERSION: u32 = 1;
const RECORDS_DIR: &str = "records";
const SUFFIX: &str = ".json.zst";
const FILES_DIR: &str = "files";
/// How long a file set no record refers to is kept after its last use by a build
/// (whose record, not yet written, may refer to it).
pub const FILESET_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How a build ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// Finished.
    Completed,
    /// Failed.
    Failed,
    /// Stopped by Ctrl-C or SIGTERM.
    Interrupted,
}

impl BuildStatus {
    /// `completed`, `failed`, `interrupted`.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Completed => "completed",
            BuildStatus::Failed => "failed",
            BuildStatus::Interrupted => "interrupted",
        }
    }
}

/// One build.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// Sortable id ([`new_record_id`]).
    pub id: String,
    /// Start, Unix milliseconds.
    pub started_ms: u64,
    /// End, Unix milliseconds.
    pub ended_ms: u64,
    /// How it ended (`None` only while running).
    pub status: Option<BuildStatus>,
    /// The error line of a failed build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The build context directory.
    pub context: String,
    /// The Dockerfile's path.
    pub dockerfile: String,
    /// `sha256:` of the Dockerfile's bytes.
    pub dockerfile_digest: String,
    /// `--build-arg`s.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    #[serde(default)]
    pub target: Option<String>,
    /// `--platform`.
    pub platform: String,
    /// `-t` names.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `--output`s, as given.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// The built image's manifest digest.
    #[serde(default)]
    pub image: Option<String>,
    /// The steps, in display order.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
}

/// What became of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Found in the cache.
    Cached,
    /// Executed.
    Built,
    /// Failed.
    Failed,
    /// Started but not finished (the build failed elsewhere or was interrupted).
    Cancelled,
}

/// Where a cache hit came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HitSource {
    /// This store; the build that produced it, if known.
    Store {
        /// Its record id.
        build: Option<String>,
    },
    /// A `--cache-from` cache (a registry's or a directory's).
    Registry {
        /// The cache reference (or directory) as given.
        reference: String,
    },
}

/// Why a step missed, as the builder's `explain` module says it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    /// `base`, `instruction`, `arg`, `env`, `secret`, `files`, `parent`, `gone`,
    /// `no-record`, `no-cache`, `other`.
    pub kind: String,
    /// The words shown (`src/main.py changed`).
    pub details: String,
}

/// One step of a build.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// `#N` in the progress display.
    pub number: usize,
    /// The vertex name as progress shows it (`[app 2/4] COPY . /app`).
    pub name: String,
    /// Stage name (or index).
    pub stage: String,
    /// Position of the step within its stage (1-based; 0 for internal vertices).
    pub position: usize,
    /// Dockerfile line (0 for internal vertices).
    pub line: usize,
    /// The instruction as written.
    pub instruction: String,
    /// The op's definition digest.
    pub definition: String,
    /// The cache key (none if the step never got one).
    #[serde(default)]
    pub key: Option<String>,
    /// Outcome (none: never started).
    #[serde(default)]
    pub status: Option<StepStatus>,
    /// Where a hit came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<HitSource>,
    /// Why it missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miss: Option<Miss>,
    /// Time spent, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// The layer it added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// What its key was made of.
    #[serde(default)]
    pub inputs: StepInputs,
}

/// The inputs of a step's cache key, in a form that can be compared with a later build.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepInputs {
    /// `FROM`: the reference and what it resolved to (ChainID and manifest digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseInput>,
    /// COPY/ADD (and `RUN --mount=type=bind` of the context): the id of the selected
    /// files' set (their tree digest), kept once per store in `records/files/`, so that
    /// a rebuild over the same files adds nothing but this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_id: Option<String>,
    /// The selected files themselves: in memory until the record is written, and in an
    /// exported record (`kiln builds inspect --format json`), which must stand alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileSet>,
    /// RUN: the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// RUN: its environment (including the build args in scope).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The build args the step uses and their values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// RUN: its mounts, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    /// RUN: its network mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// What else went into the key (a download's digest, an `--checksum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// A base image as a step saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseInput {
    /// The reference as written.
    pub reference: String,
    /// What it resolved to: the ChainID of its layers (the cache key of the image).
    pub digest: String,
    /// The manifest digest it resolved to, as users know the image (`docker images
    /// --digests`); absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// One file a COPY selected: what its cache key covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the source, `/`-separated.
    pub path: String,
    /// `f` file, `d` directory, `l` symlink, `p` fifo, `c`/`b` devices, `s` socket.
    pub kind: char,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file.
    pub size: u64,
    /// BLAKE3 of a regular file's content (and xattrs).
    pub hash: Option<[u8; 32]>,
    /// A symlink's target.
    pub link: Option<String>,
}

/// The files of a step, sorted by path. Serialized compactly (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileSet(pub Vec<FileEntry>);

/// One [`FileEntry`] on disk: `[shared prefix length, rest of the path, kind, mode, uid,
/// gid, size, hash hex or null, link or null]`.
type WireEntry = (
    usize,
    String,
    char,
    u32,
    u32,
    u32,
    u64,
    Option<String>,
    Option<String>,
);

impl Serialize for FileSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut prev = "";
        let wire: Vec<WireEntry> = self
            .0
            .iter()
            .map(|e| {
                let shared = common_prefix(prev, &e.path);
                prev = &e.path;
                (
                    shared,
                    e.path[shared..].to_string(),
                    e.kind,
                    e.mode,
                    e.uid,
                    e.gid,
                    e.size,
                    e.hash.map(|h| crate::hex::encode(&h)),
                    e.link.clone(),
                )
            })
            .collect();
        wire.serialize(s)
    }
}

impl<'de> Deserialize<'de> for FileSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wire = Vec::<WireEntry>::deserialize(d)?;
        let mut prev = String::new();
        let mut out = Vec::with_capacity(wire.len());
        for (shared, rest, kind, mode, uid, gid, size, hash, link) in wire {
            let Some(head) = prev.get(..shared) else {
                return Err(serde::de::Error::custom("bad path prefix length"));
            };
            let path = format!("{head}{rest}");
            let hash = match hash {
                Some(h) => Some(
                    crate::hex::decode32(&h).ok_or_else(|| serde::de::Error::custom("bad hash"))?,
                ),
                None => None,
            };
            prev.clone_from(&path);
            out.push(FileEntry {
                path,
                kind,
                mode,
                uid,
                gid,
                size,
                hash,
                link,
            });
        }
        Ok(FileSet(out))
    }
}

/// Length of the common prefix of `a` and `b`, on a char boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = 0;
    for ((i, x), y) in a.char_indices().zip(b.chars()) {
        if x != y {
            return i;
        }
        n = i + x.len_utf8();
    }
    n
}

/// A new record id: Unix milliseconds then 16 bits that differ between processes and
/// calls, all hex, so ids sort by time.
pub fn new_record_id() -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mix = blake3::hash(format!("{}.{}.{seq}", std::process::id(), now.as_nanos()).as_bytes());
    let r = u16::from_le_bytes([mix.as_bytes()[0], mix.as_bytes()[1]]);
    format!("{:013x}{r:04x}", now.as_millis())
}

/// The record as stored: zstd-compressed JSON.
pub fn encode_record(r: &BuildRecord) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(r).map_err(|source| CacheError::Serialize {
        what: format!("build record {}", r.id),
        source,
    })?;
    zstd::bulk::compress(&json, 3).map_err(|e| CacheError::io("compress", "build record", e))
}

/// Reads what [`encode_record`] wrote; `path` is named in errors.
pub fn decode_record(bytes: &[u8], path: &std::path::Path) -> Result<BuildRecord> {
    let corrupt = |reason: String| CacheError::CorruptFile {
        path: path.to_path_buf(),
        reason,
    };
    let json = zstd::stream::decode_all(bytes).map_err(|e| corrupt(format!("not zstd ({e})")))?;
    serde_json::from_slice(&json).map_err(|e| corrupt(format!("not a build record ({e})")))
}

/// How many records are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLimits {
    /// At most this many (the newest).
    pub max_count: usize,
    /// None older than this.
    pub max_age: Duration,
}

impl Default for RecordLimits {
    fn default() -> Self {
        RecordLimits {
            max_count: 50,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl Store {
    /// `records/`: one build record per file (see [`BuildRecord`]). Made on first use.
    pub fn records_dir(&self) -> PathBuf {
        self.dir(RECORDS_DIR)
    }

    /// Writes `record` (atomically, replacing an earlier version of the same id). The
    /// file sets of its steps go to `records/files/` (once per id), the record keeps
    /// their ids.
    pub fn record_put(&self, record: &BuildRecord) -> Result<()> {
        let dir = self.records_dir();
        std::fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let mut record = record.clone();
        for s in &mut record.steps {
            if let (Some(id), Some(files)) = (&s.inputs.files_id, s.inputs.files.take()) {
                self.fileset_put(id, &files)?;
            }
        }
        let bytes = encode_record(&record)?;
        self.write_atomic(&dir.join(format!("{}{SUFFIX}", record.id)), &bytes)
    }

    fn fileset_path(&self, id: &str) -> PathBuf {
        let name: String = id
            .rsplit(':')
            .next()
            .unwrap_or(id)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        self.records_dir()
            .join(FILES_DIR)
            .join(format!("{name}{SUFFIX}"))
    }

    /// Whether the file set `id` is stored; if so, marks it as just used, so that a
    /// trim running beside this build (which will refer to it) leaves it alone for
    /// [`FILESET_GRACE`]. One open and a time update: what a no-op rebuild costs.
    pub fn fileset_reuse(&self, id: &str) -> bool {
        std::fs::File::options()
            .write(true)
            .open(self.fileset_path(id))
            .and_then(|f| f.set_modified(SystemTime::now()))
            .is_ok()
    }

    /// Stores the file set `id` unless it is there already.
    pub fn fileset_put(&self, id: &str, files: &FileSet) -> Result<()> {
        let path = self.fileset_path(id);
        if path.exists() {
            return Ok(());
        }
        let dir = self.records_dir().join(FILES_DIR);
        std::fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let json = serde_json::to_vec(files).map_err(|source| CacheError::Serialize {
            what: format!("file set {id}"),
            source,
        })?;
        let bytes =
            zstd::bulk::compress(&json, 3).map_err(|e| CacheError::io("compress", &path, e))?;
        self.write_atomic(&path, &bytes)
    }

    /// The file set `id` (None if it is not stored).
    pub fn fileset_get(&self, id: &str) -> Result<Option<FileSet>> {
        let path = self.fileset_path(id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io("read", &path, e)),
        };
        let corrupt = |reason: String| CacheError::CorruptFile {
            path: path.clone(),
            reason,
        };
        let json =
            zstd::stream::decode_all(&bytes[..]).map_err(|e| corrupt(format!("not zstd ({e})")))?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| corrupt(format!("not a file set ({e})")))
    }

    /// Removes the file sets no record refers to any more and that were not used in
    /// the last `min_age` (a running build may use one before its record is written).
    pub fn filesets_trim(&self, min_age: Duration) -> Result<()> {
        let mut used = std::collections::HashSet::new();
        for id in self.record_ids()? {
            // An unreadable record keeps nothing alive; it is useless anyway.
            if let Ok(Some(r)) = self.record_get(&id) {
                for s in r.steps {
                    if let Some(f) = s.inputs.files_id {
                        used.insert(self.fileset_path(&f));
                    }
                }
            }
        }
        let dir = self.records_dir().join(FILES_DIR);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let now = SystemTime::now();
        for e in rd.filter_map(|e| e.ok()) {
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if !used.contains(&e.path()) && age >= min_age {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Record `id` with its file sets inline: what `kiln builds inspect --format json`
    /// exports and `--explain-against` reads back on another machine.
    pub fn record_export(&self, id: &str) -> Result<Option<BuildRecord>> {
        let Some(mut r) = self.record_get(id)? else {
            return Ok(None);
        };
        for s in &mut r.steps {
            if let Some(f) = &s.inputs.files_id {
                s.inputs.files = self.fileset_get(f)?;
            }
        }
        Ok(Some(r))
    }

    /// Every record id, oldest first.
    pub fn record_ids(&self) -> Result<Vec<String>> {
        let dir = self.records_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CacheError::io("read directory", &dir, e)),
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(SUFFIX))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The id that `prefix` names: itself, or the one id it begins.
    pub fn record_resolve(&self, prefix: &str) -> Result<Option<String>> {
        let ids = self.record_ids()?;
        if ids.iter().any(|i| i == prefix) {
            return Ok(Some(prefix.to_string()));
        }
        let m: Vec<&String> = ids.iter().filter(|i| i.starts_with(prefix)).collect();
        match m.as_slice() {
            [one] => Ok(Some((*one).clone())),
            [] => Ok(None),
            _ => Err(CacheError::InvalidArgument {
                what: "build record id",
                value: prefix.to_string(),
                reason: "more than one record begins with it",
            }),
        }
    }

    /// Reads record `id` (None if there is none).
    pub fn record_get(&self, id: &str) -> Result<Option<BuildRecord>> {
        let path = self.records_dir().join(format!("{id}{SUFFIX}"));
        match std::fs::read(&path) {
            Ok(b) => decode_record(&b, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::io("read", &path, e)),
        }
    }

    /// Size in bytes of record `id` as stored, and of the file sets it refers to (which
    /// later records of the same files share).
    pub fn record_size(&self, id: &str) -> Result<(u64, u64)> {
        let path = self.records_dir().join(format!("{id}{SUFFIX}"));
        let own = std::fs::metadata(&path).ctx("stat", &path)?.len();
        let mut sets = std::collections::BTreeSet::new();
        if let Some(r) = self.record_get(id)? {
            sets.extend(r.steps.into_iter().filter_map(|s| s.inputs.files_id));
        }
        let files = sets
            .iter()
            .filter_map(|f| std::fs::metadata(self.fileset_path(f)).ok())
            .map(|m| m.len())
            .sum();
        Ok((own, files))
    }

    /// Every readable record, newest first (an unreadable one is skipped: records are
    /// a convenience, never a reason for a build to fail).
    pub fn records_newest_first(&self) -> Result<Vec<BuildRecord>> {
        let mut out = Vec::new();
        for id in self.record_ids()?.into_iter().rev() {
            if let Ok(Some(r)) = self.record_get(&id) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Removes record `id`; false if there was none.
    pub fn record_remove(&self, id: &str) -> Result<bool> {
        let path = self.records_dir().join(format!("{id}{SUFFIX}"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io("remove", &path, e)),
        }
    }

    /// Removes the records beyond `limits` (the oldest past `max_count`, and those older
    /// than `max_age` at `now`); returns their ids. The age is the id's own time.
    pub fn records_trim(&self, limits: RecordLimits, now: SystemTime) -> Result<Vec<String>> {
        let ids = self.record_ids()?;
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let cutoff = now_ms.saturating_sub(limits.max_age.as_millis() as u64);
        let excess = ids.len().saturating_sub(limits.max_count);
        let mut removed = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let ms = id
                .get(..13)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            if (i < excess || ms < cutoff) && self.record_remove(id)? {
                removed.push(id.clone());
            }
        }
        if !removed.is_empty() {
            self.filesets_trim(FILESET_GRACE)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> FileSet {
        let mut v: Vec<FileEntry> = (0..n)
            .map(|i| FileEntry {
                path: format!("src/module{:03}/file{i:05}.py", i % 200),
                kind: 'f',
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 1000 + i as u64,
                hash: Some(*blake3::hash(&i.to_le_bytes()).as_bytes()),
                link: None,
            })
            .collect();
        v.push(FileEntry {
            path: "src/ünï/link".into(),
            kind: 'l',
            mode: 0o777,
            uid: 1000,
            gid: 1000,
            size: 0,
            hash: None,
            link: Some("../x".into()),
        });
        v.sort_by(|a, b| a.path.cmp(&b.path));
        FileSet(v)
    }

    fn record(n: usize) -> BuildRecord {
        BuildRecord {
            version: RECORD_VERSION,
            id: new_record_id(),
            status: Some(BuildStatus::Completed),
            steps: vec![StepRecord {
                number: 3,
                name: "[app 2/2] COPY . /app".into(),
                instruction: "COPY . /app".into(),
                inputs: StepInputs {
                    files: Some(files(n)),
                    ..StepInputs::default()
                },
                miss: Some(Miss {
                    kind: "files".into(),
                    details: "x changed".into(),
                }),
                source: Some(HitSource::Store {
                    build: Some("abc".into()),
                }),
                ..StepRecord::default()
            }],
            ..BuildRecord::default()
        }
    }

    #[test]
    fn codec_round_trips() {
        let r = record(100);
        let bytes = encode_record(&r).unwrap();
        assert_eq!(decode_record(&bytes, "x".as_ref()).unwrap(), r);
    }

    #[test]
    fn a_20000_file_copy_stays_under_2_mb() {
        let r = record(20_000);
        let bytes = encode_record(&r).unwrap();
        assert!(bytes.len() < 2_000_000, "{} bytes", bytes.len());
        assert_eq!(decode_record(&bytes, "x".as_ref()).unwrap(), r);
    }

    #[test]
    fn garbage_is_a_corrupt_file() {
        let e = decode_record(b"nope", "records/x.json.zst".as_ref()).unwrap_err();
        assert!(
            e.to_string().starts_with("records/x.json.zst is corrupt"),
            "{e}"
        );
    }

    #[test]
    fn ids_sort_by_time_and_differ() {
        let a = new_record_id();
        let b = new_record_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 17);
        assert!(a[..13] <= b[..13]);
    }

    #[test]
    fn store_keeps_within_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = SystemTime::now();
        let now_ms = now.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        // Two 40 days old, four fresh.
        let mut ids = Vec::new();
        for (i, age_days) in [40u64, 40, 0, 0, 0, 0].iter().enumerate() {
            let ms = now_ms - age_days * 24 * 3600 * 1000 - (10 - i as u64);
            let mut r = record(1);
            r.id = format!("{ms:013x}{i:04x}");
            store.record_put(&r).unwrap();
            ids.push(r.id);
        }
        assert_eq!(store.record_ids().unwrap(), ids);
        let limits = RecordLimits {
            max_count: 3,
            ..RecordLimits::default()
        };
        let removed = store.records_trim(limits, now).unwrap();
        assert_eq!(removed, ids[..3].to_vec());
        assert_eq!(store.record_ids().unwrap(), ids[3..].to_vec());
        assert_eq!(
            store.record_resolve(&ids[5][..16]).unwrap(),
            Some(ids[5].clone())
        );
        assert!(store.record_remove(&ids[5]).unwrap());
        assert_eq!(store.record_get(&ids[5]).unwrap(), None);
    }

    #[test]
    fn file_sets_are_stored_once_exported_inline_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut r = record(10);
        let files = r.steps[0].inputs.files.clone().unwrap();
        r.steps[0].inputs.files_id = Some("sha256:00ff".into());
        store.record_put(&r).unwrap();
        let stored = store.record_get(&r.id).unwrap().unwrap();
        assert_eq!(stored.steps[0].inputs.files, None);
        assert!(store.fileset_path("sha256:00ff").exists());
        assert_eq!(
            store.record_export(&r.id).unwrap().unwrap().steps[0]
                .inputs
                .files,
            Some(files)
        );
        assert!(store.fileset_reuse("sha256:00ff"));
        assert!(!store.fileset_reuse("sha256:0000"));
        let limits = RecordLimits {
            max_count: 0,
            ..RecordLimits::default()
        };
        store.records_trim(limits, SystemTime::now()).unwrap();
        // Just used: a build running beside may refer to it.
        assert!(store.fileset_reuse("sha256:00ff"));
        store.filesets_trim(Duration::ZERO).unwrap();
        assert!(!store.fileset_reuse("sha256:00ff"));
    }
}
