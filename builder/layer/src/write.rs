//! Writing a diff directory as a deterministic OCI layer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_oci::Digest;
use kiln_oci::digest::Hashing;
use rustix::fs::{Mode, OFlags};
use tar::{EntryType, Header};
use walkdir::WalkDir;

use super::chunk::{BlobSink, ChunkCache, ChunkInfo, Chunked, Chunker, Fingerprint, Mark};
use super::compression::Compression;
use super::error::LayerError;
use super::whiteout::{
    OPAQUE_WHITEOUT, TRUSTED_OPAQUE_XATTR, USER_OPAQUE_XATTR, WHITEOUT_PREFIX, is_overlay_xattr,
};

/// A predicate on paths relative to the diff directory: true leaves the path
/// (and, for a directory, its subtree) out of the layer.
pub type SkipFn = dyn Fn(&Path) -> bool + Sync;

/// How [`write_layer`] builds a layer.
#[derive(Default)]
pub struct LayerOptions {
    /// Compression of the blob (default: gzip level 6).
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: when set, every entry's mtime is clamped to it
    /// (`min(mtime, epoch)`), so the same content gives the same bytes.
    pub source_date_epoch: Option<i64>,
    /// Paths (relative to the diff directory, e.g. `etc/passwd`) for which
    /// this returns true are left out; a skipped directory's whole subtree
    /// is left out.
    pub skip: Option<Box<SkipFn>>,
    /// Compressed chunks of earlier layers that may be reused. gzip and zstd layers
    /// are written as chunks either way; with a cache, the chunks it holds are copied
    /// instead of compressed, which gives the same bytes.
    pub chunk_cache: Option<Arc<dyn ChunkCache>>,
}

impl fmt::Debug for LayerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerOptions")
            .field("compression", &self.compression)
            .field("source_date_epoch", &self.source_date_epoch)
            .field("skip", &self.skip.as_ref().map(|_| "<fn>"))
            .field("chunk_cache", &self.chunk_cache.as_ref().map(|_| "<cache>"))
            .finish()
    }
}

/// What [`write_layer`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the blob as written to the output (the layer's
    /// descriptor digest).
    pub digest: Digest,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Size of the blob as written to the output.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// The blob's OCI media type.
    pub media_type: &'static str,
    /// Number of tar entries (PAX extension headers not counted; whiteout
    /// and opaque markers counted).
    pub entries: u64,
    /// The blob's chunks, in order (empty for an uncompressed layer). Each one is a
    /// gzip member or zstd frame of its own; see [`crate::ChunkInfo`].
    pub chunks: Vec<ChunkInfo>,
}

/// Where the tar stream goes: a chunker for gzip and zstd, the plain output for an
/// uncompressed layer. Either hashes the tar for the diff_id and the blob for its
/// digest (one hash when they are the same bytes).
pub(super) enum Sink<W: BlobSink> {
    Chunked(Box<Chunker<W>>),
    Plain(Box<Hashing<W>>),
}

impl<W: BlobSink> Sink<W> {
    pub(super) fn begin_entry(&mut self, size: u64) -> io::Result<()> {
        match self {
            Sink::Chunked(c) => c.begin_entry(size),
            Sink::Plain(_) => Ok(()),
        }
    }

    pub(super) fn end_entry(&mut self, name: &[u8], mark: Option<Mark>) -> io::Result<()> {
        match self {
            Sink::Chunked(c) => c.end_entry(name, mark),
            Sink::Plain(_) => Ok(()),
        }
    }

    fn finish(self) -> io::Result<Chunked<W>> {
        match self {
            Sink::Chunked(c) => c.finish(),
            Sink::Plain(e) => {
                // The blob is the tar.
                let (out, diff_id, size) = (*e).finish();
                Ok(Chunked {
                    out,
                    chunks: Vec::new(),
                    digest: diff_id.clone(),
                    diff_id,
                    uncompressed_size: size,
                    size,
                })
            }
        }
    }
}

impl<W: BlobSink> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Chunked(c) => c.write(buf),
            Sink::Plain(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Chunked(c) => c.flush(),
            Sink::Plain(e) => e.flush(),
        }
    }
}

/// Whether `dir` has no entries at all, i.e. a step changed nothing and its
/// history entry can be marked `empty_layer`.
pub fn is_empty_dir(dir: &Path) -> Result<bool, LayerError> {
    let mut it = fs::read_dir(dir).map_err(|e| LayerError::io("read directory", dir, e))?;
    match it.next() {
        None => Ok(true),
        Some(Ok(_)) => Ok(false),
        Some(Err(e)) => Err(LayerError::io("read directory", dir, e)),
    }
}

/// What an on-disk entry becomes in the tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir {
        opaque: bool,
    },
    File,
    Symlink,
    Fifo,
    Char,
    Block,
    /// A 0/0 character device: an overlayfs whiteout.
    Whiteout,
}

/// One entry to write, collected before sorting.
struct Item {
    /// Absolute path on disk: the entry itself (a walked directory) or the file its
    /// data, xattrs and link target are read from (given entries).
    path: PathBuf,
    /// Name in the tar: relative path, `/`-terminated for directories,
    /// `.wh.`-prefixed for whiteouts. Also the sort key.
    name: Vec<u8>,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    /// Data length of a file.
    size: u64,
    rdev: u64,
    /// The inode of a file with several links: the later paths of one become
    /// hardlink entries to the first.
    link: Option<(u64, u64)>,
    /// Given bytes of a file (instead of `path`'s).
    data: Option<Vec<u8>>,
    /// A symlink's given target (instead of reading `path`'s); for a file, the file
    /// its bytes are read from when it is not `path`.
    target: Option<PathBuf>,
    /// Whether the xattrs of `path` are the entry's.
    xattrs: bool,
    /// The identity and stat of `path` as listed (a walked entry), for its
    /// fingerprint; `None`: `path` is stat'ed when the fingerprint is made.
    stat: Option<StatIdent>,
    /// For an archive member, where its bytes start in the decompressed stream of the
    /// archive `path` (see [`EntryKind::Member`]).
    member: Option<u64>,
}

/// What a fingerprint takes of a file's stat: device, inode, mode, size, and mtime
/// and ctime to the nanosecond.
type StatIdent = [u64; 8];

fn stat_ident(m: &Metadata) -> StatIdent {
    [
        m.dev(),
        m.ino(),
        u64::from(m.mode()),
        m.len(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
    ]
}

impl Item {
    fn from_meta(path: PathBuf, name: Vec<u8>, kind: Kind, meta: &Metadata) -> Item {
        let may_link = !matches!(kind, Kind::Dir { .. } | Kind::Whiteout);
        Item {
            path,
            name,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            size: meta.len(),
            rdev: meta.rdev(),
            link: (may_link && meta.nlink() > 1).then(|| (meta.dev(), meta.ino())),
            data: None,
            target: None,
            xattrs: kind != Kind::Whiteout,
            stat: Some(stat_ident(meta)),
            member: None,
        }
    }
}

/// An entry of a layer given by the caller of [`write_layer_entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Its path in the layer, relative, without a trailing `/`.
    pub path: PathBuf,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// A file whose extended attributes (overlayfs' own left out) the entry has.
    pub xattrs_from: Option<PathBuf>,
}

/// What a [`LayerEntry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with the first `len` bytes of `from` (which must still have
    /// them when the layer is written).
    File {
        /// Where the bytes are read from (a symlink there is refused).
        from: PathBuf,
        /// How many.
        len: u64,
        /// An inode identity: the entries of one are written as one file and
        /// hardlinks to it.
        link: Option<(u64, u64)>,
    },
    /// A regular file with these bytes.
    Data(Vec<u8>),
    /// A regular file whose bytes are a member of an archive: `len` bytes at `offset`
    /// of the archive's decompressed stream, which the opener given to
    /// [`write_layer_entries_with`] gives.
    Member {
        /// The archive.
        archive: PathBuf,
        /// Where the bytes start in its decompressed stream.
        offset: u64,
        /// How many.
        len: u64,
        /// An inode identity, as for [`EntryKind::File`].
        link: Option<(u64, u64)>,
    },
    /// A symlink.
    Symlink(PathBuf),
}

/// Opens the decompressed stream of an archive at an offset, for the
/// [`EntryKind::Member`] entries of [`write_layer_entries_with`].
pub type OpenArchive = dyn Fn(&Path, u64) -> io::Result<Box<dyn Read + Send>>;

/// The open archive streams of a layer being written: a member after the last one read
/// from the same archive is reached by reading on; one before it opens the archive
/// again (a plain tar seeks, a compressed one is decoded again up to it).
struct Members<'a> {
    open: &'a OpenArchive,
    /// Per archive: its stream and the offset it is at.
    streams: HashMap<PathBuf, (Box<dyn Read + Send>, u64)>,
}

impl Members<'_> {
    /// The `len` bytes at `offset` of `archive`.
    fn read(&mut self, archive: &Path, offset: u64, len: u64) -> io::Result<impl Read + '_> {
        let reuse = self
            .streams
            .get(archive)
            .is_some_and(|(_, pos)| *pos <= offset);
        if !reuse {
            self.streams.remove(archive);
            let stream = (self.open)(archive, offset)?;
            self.streams.insert(archive.to_path_buf(), (stream, offset));
        }
        let (stream, pos) = self
            .streams
            .get_mut(archive)
            .expect("the stream was just opened");
        let gap = offset - *pos;
        if io::copy(&mut stream.take(gap), &mut io::sink())? != gap {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // Where it will be once the member is read (an error fails the whole layer).
        *pos = offset + len;
        Ok(stream.take(len))
    }
}

/// Writes the diff directory `dir` as an OCI layer blob to `out`, returning
/// its digests and sizes.
///
/// - Entries are named by their path relative to `dir` (which itself is not
///   an entry), directories with a trailing `/`, and sorted by that name in
///   byte order (so parents come before children), except that an opaque
///   directory's `.wh..wh..opq` marker immediately follows the directory.
/// - ustar headers, with PAX records for long names and link names, ids or
///   sizes too large for ustar, and xattrs (`SCHILY.xattr.*`, overlayfs'
///   own left out). Modes (with setuid/setgid/sticky), uid/gid and device
///   numbers are kept, uname/gname are empty, no atime/ctime.
/// - mtimes are clamped to [`LayerOptions::source_date_epoch`] when set.
/// - The second and later paths of an inode become hardlink entries to the
///   first one.
/// - overlayfs whiteouts become OCI ones: a 0/0 character device `NAME` is
///   written as an empty `.wh.NAME` (mode 0, owner 0:0), a directory with
///   `trusted.overlay.opaque=y` or `user.overlay.opaque=y` gets a
///   `.wh..wh..opq` entry. `.wh.*` files already in `dir` are kept as-is.
/// - Sockets are skipped (tar cannot hold them).
///
/// Both digests are computed as the stream is written; nothing is buffered
/// beyond the compressor's window.
pub fn write_layer(
    dir: &Path,
    opts: &LayerOptions,
    out: impl BlobSink,
) -> Result<LayerInfo, LayerError> {
    let meta = fs::symlink_metadata(dir).map_err(|e| LayerError::io("stat", dir, e))?;
    if !meta.is_dir() {
        return Err(LayerError::io(
            "read layer directory",
            dir,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let items = collect(dir, opts)?;
    write_items(&items, opts, out, dir, None)
}

/// Writes the layer made of `entries` (in any order; their parent directories need not
/// be among them) as [`write_layer`] writes a directory holding them: the same bytes
/// for the same names, metadata and contents. Files are read from their sources as
/// they are written, one open and one pass each; nothing is staged.
/// [`LayerOptions::skip`] does not apply.
pub fn write_layer_entries(
    entries: Vec<LayerEntry>,
    opts: &LayerOptions,
    out: impl BlobSink,
) -> Result<LayerInfo, LayerError> {
    write_layer_entries_with(entries, opts, out, &|path, _| {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("no archive reader for {}", path.display()),
        ))
    })
}

/// [`write_layer_entries`] with archive members ([`EntryKind::Member`]), whose bytes
/// `open` gives. Members are read in the layer's (path) order: one after the last one
/// read from its archive costs reading the bytes between; one before it opens the
/// archive again.
pub fn write_layer_entries_with(
    entries: Vec<LayerEntry>,
    opts: &LayerOptions,
    out: impl BlobSink,
    open: &OpenArchive,
) -> Result<LayerInfo, LayerError> {
    let mut items: Vec<Item> = entries
        .into_iter()
        .map(|e| {
            let mut name = e.path.as_os_str().as_bytes().to_vec();
            let mut item = Item {
                path: e.xattrs_from.clone().unwrap_or_default(),
                name: Vec::new(),
                kind: Kind::File,
                mode: e.mode & 0o7777,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime,
                size: 0,
                rdev: 0,
                link: None,
                data: None,
                target: None,
                xattrs: e.xattrs_from.is_some(),
                stat: None,
                member: None,
            };
            match e.kind {
                EntryKind::Dir => {
                    name.push(b'/');
                    item.kind = Kind::Dir { opaque: false };
                }
                EntryKind::File { from, len, link } => {
                    item.size = len;
                    item.link = link;
                    if !item.xattrs {
                        item.path = from;
                    } else if item.path != from {
                        // Xattrs from one file, bytes from another: `target`
                        // names the file the bytes are read from.
                        item.target = Some(from);
                    }
                }
                EntryKind::Data(bytes) => {
                    item.size = bytes.len() as u64;
                    item.data = Some(bytes);
                }
                EntryKind::Member {
                    archive,
                    offset,
                    len,
                    link,
                } => {
                    item.size = len;
                    item.link = link;
                    item.member = Some(offset);
                    // Never with xattrs: `path` is the archive.
                    item.xattrs = false;
                    item.path = archive;
                }
                EntryKind::Symlink(target) => {
                    item.kind = Kind::Symlink;
                    item.target = Some(target);
                }
            }
            item.name = name;
            item
        })
        .collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    let mut members = Members {
        open,
        streams: HashMap::new(),
    };
    write_items(
        &items,
        opts,
        out,
        Path::new("<entries>"),
        Some(&mut members),
    )
}

/// The sink a layer in `opts.compression` is written through.
pub(super) fn start_sink<W: BlobSink>(opts: &LayerOptions, out: W) -> Sink<W> {
    match opts.compression {
        Compression::Uncompressed => Sink::Plain(Box::new(Hashing::new(out))),
        c => Sink::Chunked(Box::new(Chunker::new(c, opts.chunk_cache.clone(), out))),
    }
}

/// Finishes a layer written through `sink` (the tar's end-of-archive blocks written).
pub(super) fn finish_sink<W: BlobSink>(
    sink: Sink<W>,
    opts: &LayerOptions,
    entries: u64,
    dir: &Path,
) -> Result<LayerInfo, LayerError> {
    let finish_err = |e| LayerError::io("finish writing layer from", dir, e);
    let Chunked {
        mut out,
        chunks,
        diff_id,
        uncompressed_size,
        digest,
        size,
    } = sink.finish().map_err(finish_err)?;
    out.flush().map_err(finish_err)?;
    Ok(LayerInfo {
        digest,
        diff_id,
        size,
        uncompressed_size,
        media_type: opts.compression.media_type(),
        entries,
        chunks,
    })
}

fn write_items(
    items: &[Item],
    opts: &LayerOptions,
    out: impl BlobSink,
    dir: &Path,
    mut members: Option<&mut Members<'_>>,
) -> Result<LayerInfo, LayerError> {
    let mut sink = start_sink(opts, out);
    let epoch = opts.source_date_epoch;
    let mut entries = 0u64;
    // (dev, ino) -> tar name of the first path with that inode.
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();

    // Fingerprints of the entries, for resume points in the chunk index, and the
    // longest head of an earlier blob with the same entries, if the cache has one.
    let mut prints = Vec::new();
    let mut start = 0;
    if let (Sink::Chunked(chunker), Some(cache)) = (&mut sink, opts.chunk_cache.as_deref()) {
        let codec = chunker.codec().to_owned();
        prints = fingerprints(items, epoch, &codec);
        let found = cache.can_resume(&codec).then(|| {
            prints
                .iter()
                .enumerate()
                .rev()
                .find_map(|(i, f)| cache.resume(&codec, f).map(|r| (i, r)))
        });
        if let Some((last, resume)) = found.flatten() {
            entries = chunker
                .resume(cache, resume)
                .map_err(|e| LayerError::io("reuse an earlier layer's head for", dir, e))?;
            for item in &items[..=last] {
                if let Some(key) = item.link {
                    links.entry(key).or_insert_with(|| item.name.clone());
                }
            }
            start = last + 1;
        }
    }

    let mut builder = tar::Builder::new(sink);
    let boundary_err = |path: &Path, e| LayerError::io("write layer entry for", path, e);
    for (i, item) in items.iter().enumerate().skip(start) {
        // A second path of an inode is a hardlink entry, with no data.
        let is_link = item.link.is_some_and(|k| links.contains_key(&k));
        let size = if item.kind == Kind::File && !is_link {
            item.size
        } else {
            0
        };
        builder
            .get_mut()
            .begin_entry(size)
            .map_err(|e| boundary_err(&item.path, e))?;
        entries += write_item(
            &mut builder,
            item,
            epoch,
            &mut links,
            members.as_deref_mut(),
        )?;
        let mark = prints.get(i).map(|&fingerprint| Mark {
            fingerprint,
            entries,
        });
        builder
            .get_mut()
            .end_entry(&item.name, mark)
            .map_err(|e| boundary_err(&item.path, e))?;
    }

    let sink = builder
        .into_inner()
        .map_err(|e| LayerError::io("finish writing layer from", dir, e))?;
    finish_sink(sink, opts, entries, dir)
}

/// The rolling fingerprints of `items` (each one covers the items before it too), as
/// far as they can be made: one per item, fewer if a source cannot be stat'ed. They
/// cover what decides each item's tar bytes: its name, kind, metadata, given bytes
/// or link target, and the identity and stat (inode, size, mtime and ctime to the
/// nanosecond) of the files its bytes and xattrs are read from, as a build context's
/// stat cache trusts them; plus `codec` and the mtime clamp.
fn fingerprints(items: &[Item], epoch: Option<i64>, codec: &str) -> Vec<Fingerprint> {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln layer resume v1\0");
    put_bytes(&mut h, codec.as_bytes());
    h.update(&epoch.map_or([0xff; 8], i64::to_le_bytes));
    let mut prev = *h.finalize().as_bytes();
    let mut out = Vec::with_capacity(items.len());
    // The stats first, in parallel: for 20,000 small files they are the slow part.
    let stats: Vec<ItemStats> = {
        use rayon::prelude::*;
        items.par_iter().map(item_stats).collect()
    };
    for (item, stats) in items.iter().zip(&stats) {
        let Some(f) = item_fingerprint(&prev, item, epoch, stats) else {
            break;
        };
        out.push(f);
        prev = f;
    }
    out
}

/// The stats an item's fingerprint covers: of a file's separate data source (`target`)
/// and of its path, unless the walk's stat is known. `Ok(None)`: not needed; `Err`: the
/// stat failed (no fingerprint from there on).
type ItemStats = [Result<Option<StatIdent>, ()>; 2];

fn item_stats(item: &Item) -> ItemStats {
    let stat = |p: &Path| {
        fs::symlink_metadata(p)
            .map(|m| Some(stat_ident(&m)))
            .map_err(|_| ())
    };
    let target = match (&item.target, item.kind) {
        (Some(t), Kind::File) => stat(t),
        _ => Ok(None),
    };
    let path = if item.stat.is_some() || item.path.as_os_str().is_empty() {
        Ok(None)
    } else {
        stat(&item.path)
    };
    [target, path]
}

fn item_fingerprint(
    prev: &Fingerprint,
    item: &Item,
    epoch: Option<i64>,
    stats: &ItemStats,
) -> Option<Fingerprint> {
    let [target_stat, path_stat] = stats;
    let mut h = blake3::Hasher::new();
    h.update(prev);
    put_bytes(&mut h, &item.name);
    let (tag, opaque) = match item.kind {
        Kind::Dir { opaque } => (0u8, opaque),
        Kind::File => (1, false),
        Kind::Symlink => (2, false),
        Kind::Fifo => (3, false),
        Kind::Char => (4, false),
        Kind::Block => (5, false),
        Kind::Whiteout => (6, false),
    };
    h.update(&[tag, u8::from(opaque), u8::from(item.xattrs)]);
    let nums = [
        u64::from(item.mode),
        u64::from(item.uid),
        u64::from(item.gid),
        clamp_mtime(item.mtime, epoch),
        item.size,
        item.rdev,
    ];
    for n in nums {
        h.update(&n.to_le_bytes());
    }
    match item.link {
        Some((dev, ino)) => h
            .update(&[1])
            .update(&dev.to_le_bytes())
            .update(&ino.to_le_bytes()),
        None => h.update(&[0]),
    };
    match &item.data {
        Some(data) => h.update(&[1]).update(blake3::hash(data).as_bytes()),
        None => h.update(&[0]),
    };
    // A member's bytes are the archive's (its stat below) at this offset.
    if let Some(offset) = item.member {
        h.update(&[1]).update(&offset.to_le_bytes());
    }
    match &item.target {
        Some(target) => {
            h.update(&[1]);
            put_bytes(&mut h, target.as_os_str().as_bytes());
            // A file's bytes come from there; a symlink's target is just text.
            if item.kind == Kind::File {
                put_ident(&mut h, target_stat.as_ref().ok()?.as_ref()?);
            }
        }
        None => {
            h.update(&[0]);
        }
    }
    if let Some(ident) = &item.stat {
        put_ident(&mut h, ident);
    } else if !item.path.as_os_str().is_empty() {
        put_ident(&mut h, path_stat.as_ref().ok()?.as_ref()?);
    }
    Some(*h.finalize().as_bytes())
}

fn put_bytes(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn put_ident(h: &mut blake3::Hasher, ident: &StatIdent) {
    for n in ident {
        h.update(&n.to_le_bytes());
    }
}

/// Writes one item (a hardlink entry for a second path of an inode; an opaque
/// directory with its marker) and returns the number of entries written.
fn write_item<W: Write>(
    builder: &mut tar::Builder<W>,
    item: &Item,
    epoch: Option<i64>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
    members: Option<&mut Members<'_>>,
) -> Result<u64, LayerError> {
    let mut entries = 0u64;
    {
        let mtime = clamp_mtime(item.mtime, epoch);
        let mut spec = Spec {
            name: &item.name,
            link: None,
            kind: EntryType::Regular,
            mode: item.mode,
            uid: u64::from(item.uid),
            gid: u64::from(item.gid),
            mtime,
            size: 0,
            dev: None,
            xattrs: BTreeMap::new(),
        };
        if let Some(hardlink_key) = item.link {
            if let Some(first) = links.get(&hardlink_key) {
                let spec = Spec {
                    kind: EntryType::Link,
                    link: Some(first),
                    ..spec
                };
                append(builder, &spec, io::empty(), &item.path)?;
                return Ok(1);
            }
            links.insert(hardlink_key, item.name.clone());
        }
        if item.xattrs {
            spec.xattrs = read_xattrs(&item.path)?;
        }
        let target;
        match item.kind {
            Kind::File => {
                spec.size = item.size;
                if let Some(data) = &item.data {
                    append(builder, &spec, data.as_slice(), &item.path)?;
                } else if let Some(offset) = item.member {
                    let members = members.ok_or_else(|| {
                        LayerError::io(
                            "read archive member of",
                            &item.path,
                            io::ErrorKind::Unsupported.into(),
                        )
                    })?;
                    let read_err = |e| LayerError::io("read archive member of", &item.path, e);
                    let reader = ExactReader {
                        inner: members
                            .read(&item.path, offset, spec.size)
                            .map_err(read_err)?,
                        remaining: spec.size,
                    };
                    append(builder, &spec, reader, &item.path)?;
                } else {
                    let from = item.target.as_deref().unwrap_or(&item.path);
                    let file = open_nofollow(from)?;
                    let reader = ExactReader {
                        inner: file.take(spec.size),
                        remaining: spec.size,
                    };
                    append(builder, &spec, reader, from)?;
                }
            }
            Kind::Dir { opaque } => {
                spec.kind = EntryType::Directory;
                append(builder, &spec, io::empty(), &item.path)?;
                if opaque {
                    entries += 1;
                    let mut marker = item.name.clone();
                    marker.extend_from_slice(OPAQUE_WHITEOUT.as_bytes());
                    let spec = Spec {
                        name: &marker,
                        kind: EntryType::Regular,
                        mode: 0,
                        uid: 0,
                        gid: 0,
                        xattrs: BTreeMap::new(),
                        ..spec
                    };
                    append(builder, &spec, io::empty(), &item.path)?;
                }
            }
            Kind::Symlink => {
                target = match &item.target {
                    Some(t) => t.clone(),
                    None => fs::read_link(&item.path)
                        .map_err(|e| LayerError::io("read symlink", &item.path, e))?,
                };
                spec.kind = EntryType::Symlink;
                spec.link = Some(target.as_os_str().as_bytes());
                append(builder, &spec, io::empty(), &item.path)?;
            }
            Kind::Fifo => {
                spec.kind = EntryType::Fifo;
                append(builder, &spec, io::empty(), &item.path)?;
            }
            Kind::Char | Kind::Block => {
                spec.kind = if item.kind == Kind::Char {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                let rdev = item.rdev;
                spec.dev = Some((rustix::fs::major(rdev), rustix::fs::minor(rdev)));
                append(builder, &spec, io::empty(), &item.path)?;
            }
            Kind::Whiteout => {
                // `.wh.NAME`: an empty regular file owned by 0:0, mode 0.
                let spec = Spec {
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    ..spec
                };
                append(builder, &spec, io::empty(), &item.path)?;
            }
        }
        entries += 1;
    }
    Ok(entries)
}

/// `min(mtime, epoch)`, and never before 1970 (tar mtimes are unsigned here).
fn clamp_mtime(mtime: i64, epoch: Option<i64>) -> u64 {
    let t = match epoch {
        Some(e) => mtime.min(e),
        None => mtime,
    };
    u64::try_from(t).unwrap_or(0)
}

/// Walks `dir` (without following symlinks), classifies and names every
/// entry, and sorts them by tar name.
fn collect(dir: &Path, opts: &LayerOptions) -> Result<Vec<Item>, LayerError> {
    let mut items = Vec::new();
    let walker = WalkDir::new(dir)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| match (&opts.skip, e.path().strip_prefix(dir)) {
            (Some(skip), Ok(rel)) if e.depth() > 0 => !skip(rel),
            _ => true,
        });
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            let source = e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("filesystem loop"));
            LayerError::io("walk", path, source)
        })?;
        let path = entry.path().to_path_buf();
        let rel = path
            .strip_prefix(dir)
            .map_err(|_| LayerError::io("walk", &path, io::Error::other("path outside walk")))?
            .as_os_str()
            .as_bytes()
            .to_vec();
        let meta = fs::symlink_metadata(&path).map_err(|e| LayerError::io("stat", &path, e))?;
        let ft = meta.file_type();
        let (kind, name) = if ft.is_dir() {
            let mut name = rel;
            name.push(b'/');
            (
                Kind::Dir {
                    opaque: is_opaque(&path)?,
                },
                name,
            )
        } else if ft.is_file() {
            (Kind::File, rel)
        } else if ft.is_symlink() {
            (Kind::Symlink, rel)
        } else if ft.is_fifo() {
            (Kind::Fifo, rel)
        } else if ft.is_char_device() && meta.rdev() == 0 {
            let (parent, base) = super::safe_fs::split_last(&rel);
            let mut wh = WHITEOUT_PREFIX.as_bytes().to_vec();
            wh.extend_from_slice(base);
            (Kind::Whiteout, super::safe_fs::join(parent, &wh))
        } else if ft.is_char_device() {
            (Kind::Char, rel)
        } else if ft.is_block_device() {
            (Kind::Block, rel)
        } else {
            // Sockets (and anything else tar cannot represent).
            continue;
        };
        items.push(Item::from_meta(path, name, kind, &meta));
    }
    items.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| a.path.as_os_str().cmp(b.path.as_os_str()))
    });
    Ok(items)
}

/// Whether a directory carries an overlayfs opaque xattr (`y`).
fn is_opaque(path: &Path) -> Result<bool, LayerError> {
    for name in [TRUSTED_OPAQUE_XATTR, USER_OPAQUE_XATTR] {
        match xattr::get(path, name) {
            Ok(Some(v)) if v == b"y" => return Ok(true),
            Ok(_) => {}
            Err(e) if xattrs_unsupported(&e) => return Ok(false),
            Err(e) => return Err(LayerError::io("read xattrs of", path, e)),
        }
    }
    Ok(false)
}

/// Whether an xattr error just means "this filesystem has no xattrs".
fn xattrs_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error())
}

/// The entry's xattrs (not following symlinks), without overlayfs' own.
fn read_xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, LayerError> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if xattrs_unsupported(&e) => return Ok(out),
        Err(e) => return Err(LayerError::io("list xattrs of", path, e)),
    };
    for name in names {
        let key = name.as_bytes();
        if is_overlay_xattr(key) {
            continue;
        }
        match xattr::get(path, &name) {
            Ok(Some(value)) => {
                out.insert(key.to_vec(), value);
            }
            // Removed between list and get.
            Ok(None) => {}
            Err(e) => return Err(LayerError::io("read xattrs of", path, e)),
        }
    }
    Ok(out)
}

/// Opens a regular file for reading without following a symlink that might
/// have replaced it since it was listed.
fn open_nofollow(path: &Path) -> Result<File, LayerError> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| LayerError::io("open", path, e.into()))?;
    Ok(File::from(fd))
}

/// Reads exactly `remaining` bytes, failing if the file shrank while being
/// archived (which would otherwise corrupt the tar stream).
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being archived",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Header fields of one entry.
#[derive(Clone)]
struct Spec<'a> {
    name: &'a [u8],
    link: Option<&'a [u8]>,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    dev: Option<(u32, u32)>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Largest value of a 7-digit octal ustar field (uid, gid).
const MAX_OCTAL_7: u64 = 0o7777777;
/// Largest value of an 11-digit octal ustar field (size).
const MAX_OCTAL_11: u64 = 0o77777777777;
/// Length of the ustar name and linkname fields.
const NAME_FIELD_LEN: usize = 100;

/// Appends one entry (preceded by a PAX extended header when some field does
/// not fit in ustar, or when it has xattrs).
fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    spec: &Spec<'_>,
    data: impl Read,
    path: &Path,
) -> Result<(), LayerError> {
    // BTreeMap: PAX records sorted by key, as Go's archive/tar writes them.
    let mut pax: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    if spec.name.len() > NAME_FIELD_LEN {
        pax.insert(b"path".to_vec(), spec.name.to_vec());
    }
    if let Some(link) = spec.link {
        if link.len() > NAME_FIELD_LEN {
            pax.insert(b"linkpath".to_vec(), link.to_vec());
        }
    }
    if spec.uid > MAX_OCTAL_7 {
        pax.insert(b"uid".to_vec(), spec.uid.to_string().into_bytes());
    }
    if spec.gid > MAX_OCTAL_7 {
        pax.insert(b"gid".to_vec(), spec.gid.to_string().into_bytes());
    }
    if spec.size > MAX_OCTAL_11 {
        pax.insert(b"size".to_vec(), spec.size.to_string().into_bytes());
    }
    for (k, v) in &spec.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        pax.insert(key, v.clone());
    }
    let werr = |e| LayerError::io("write layer entry for", path, e);
    if !pax.is_empty() {
        let data = pax_records(&pax);
        let mut h = Header::new_ustar();
        set_field(&mut h.as_old_mut().name, &pax_header_name(spec.name));
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_entry_type(EntryType::XHeader);
        h.set_cksum();
        builder.append(&h, data.as_slice()).map_err(werr)?;
    }

    let mut h = Header::new_ustar();
    set_field(&mut h.as_old_mut().name, spec.name);
    if let Some(link) = spec.link {
        set_field(&mut h.as_old_mut().linkname, link);
    }
    h.set_entry_type(spec.kind);
    h.set_mode(spec.mode);
    h.set_uid(if spec.uid > MAX_OCTAL_7 { 0 } else { spec.uid });
    h.set_gid(if spec.gid > MAX_OCTAL_7 { 0 } else { spec.gid });
    h.set_mtime(spec.mtime);
    h.set_size(if spec.size > MAX_OCTAL_11 {
        0
    } else {
        spec.size
    });
    if let Some((major, minor)) = spec.dev {
        h.set_device_major(major).map_err(werr)?;
        h.set_device_minor(minor).map_err(werr)?;
    }
    h.set_cksum();
    // What `tar::Builder::append` writes (header, data, zero padding to a block), the
    // data through a buffer of up to [`COPY_BUF`] bytes instead of `io::copy`'s 8 KiB:
    // a 100 MiB file is read in 400 calls, not 12,800.
    let out = builder.get_mut();
    out.write_all(h.as_bytes()).map_err(werr)?;
    let n = copy_data(data, out, spec.size).map_err(werr)?;
    let pad = (BLOCK - n % BLOCK) % BLOCK;
    out.write_all(&[0u8; BLOCK as usize][..pad as usize])
        .map_err(werr)
}

/// Size of a tar block.
const BLOCK: u64 = 512;
/// The largest buffer an entry's data is copied through.
const COPY_BUF: u64 = 256 << 10;

/// Copies `data` (about `len` bytes) to `out` through a buffer of up to [`COPY_BUF`]
/// bytes (`io::copy` reads through a `BufReader`'s own buffer); returns the number of
/// bytes copied.
fn copy_data(data: impl Read, out: &mut impl Write, len: u64) -> io::Result<u64> {
    let size = usize::try_from(len.clamp(1, COPY_BUF)).unwrap_or(1);
    io::copy(&mut io::BufReader::with_capacity(size, data), out)
}

/// Copies `value` into a NUL-padded header field, truncating it (the full
/// value is then in a PAX record).
fn set_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// The name of a PAX extended header: `<dir>/PaxHeaders.0/<base>` as Go's
/// archive/tar writes it (truncated to the field by [`set_field`]).
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let (parent, base) = super::safe_fs::split_last(trimmed);
    super::safe_fs::join(&super::safe_fs::join(parent, b"PaxHeaders.0"), base)
}

/// Encodes PAX records: `"<len> <key>=<value>\n"`, where `<len>` counts the
/// whole record including its own digits.
fn pax_records(records: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = 3 + key.len() + value.len(); // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key);
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}
