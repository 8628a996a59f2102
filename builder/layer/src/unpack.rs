//! Unpacking (untrusted) layer blobs under a destination directory.
//!
//! Every file is created relative to a directory fd reached from `dest` one
//! component at a time with `O_NOFOLLOW`, so a symlink in the layer (or
//! already in `dest`) is never followed while unpacking: entries whose path
//! goes through one are refused.
//!
//! Memory does not grow with the depth of paths nor with the size of tar extension
//! records: names are limited to [`MAX_PATH_LEN`] bytes and [`MAX_PATH_DEPTH`]
//! components, extension records to 1 MiB (checked before the
//! `tar` crate reads them, see [`TarGuard`]), xattrs to Linux's own limits, and what the
//! unpacker remembers about paths is kept as a tree of components ([`PathTree`]).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use kiln_oci::Digest;
use kiln_oci::digest::Hashing;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use super::compression::detect;
use super::error::LayerError;
use super::safe_fs::{
    OpenDirError, file_type_at, join, list_dir, normalize, open_dir, os, remove_all_at, split_last,
};
use super::tar_guard::{ExtensionTooLarge, TarGuard};
use super::whiteout::{
    META_PREFIX, OPAQUE_WHITEOUT, TRUSTED_OPAQUE_XATTR, USER_OPAQUE_XATTR, WHITEOUT_PREFIX,
    is_overlay_xattr,
};

/// Longest entry name or link target accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Most components an entry name may have.
pub const MAX_PATH_DEPTH: usize = 1024;

/// Largest xattr value accepted (Linux's `XATTR_SIZE_MAX`).
const MAX_XATTR_VALUE: usize = 64 * 1024;

/// Longest xattr name accepted (Linux's `XATTR_NAME_MAX`).
const MAX_XATTR_NAME: usize = 255;

/// What to do with the OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Convert them to overlayfs whiteouts: `.wh.NAME` becomes a 0/0
    /// character device `NAME`, `.wh..wh..opq` sets `trusted.overlay.opaque=y`
    /// (`user.overlay.opaque=y` when not root) on its directory, so `dest`
    /// can be an overlayfs lower directory.
    Overlay,
    /// Keep them as the plain files they are in the tar (works without root).
    #[default]
    Oci,
    /// `dest` is a merged rootfs built up layer by layer: `.wh.NAME` deletes
    /// `NAME` (recursively) and `.wh..wh..opq` deletes what its directory held
    /// before this layer. Entries of this same layer are never deleted by
    /// its whiteouts, whatever their order in the tar. As in overlayfs, an
    /// opaque marker at the layer's root has no effect (in `Overlay` mode too).
    Apply,
}

/// How [`unpack_layer`] unpacks.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// What to do with whiteouts.
    pub whiteouts: WhiteoutMode,
    /// Create character and block devices. When false they are refused
    /// (when running as root) or skipped (when not root, where they could
    /// not be created anyway). When true but not root, they are an error.
    pub allow_devices: bool,
    /// The layer's diff_id from the image config: a mismatch with the
    /// uncompressed stream's sha256 is an error (and `dest` must then be
    /// discarded, as it has been written).
    pub expected_diff_id: Option<Digest>,
}

/// What [`unpack_layer`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackInfo {
    /// `sha256:<hex>` of the uncompressed stream, every byte of it.
    pub diff_id: Digest,
    /// Number of tar entries (PAX and GNU extension headers not counted).
    pub entries: u64,
    /// Size of the uncompressed stream.
    pub bytes: u64,
}

/// The error for a layer that cannot be read as a tar stream, with `reason`.
pub(super) fn malformed(reason: &str) -> impl FnOnce(io::Error) -> LayerError {
    let reason = reason.to_owned();
    move |source| LayerError::Malformed { reason, source }
}

/// A layer blob's tar stream (gzip, zstd or plain): decompressed, guarded
/// ([`TarGuard`]) and hashed for its diff_id as it is read ([`finish_layer_tar`]).
pub(super) fn open_layer_tar(
    blob: impl Read,
) -> Result<tar::Archive<TarGuard<Hashing<impl Read>>>, LayerError> {
    let (_, decoder) = detect(blob).map_err(malformed("cannot read the layer's first bytes"))?;
    Ok(tar::Archive::new(TarGuard::new(Hashing::new(decoder))))
}

/// Reads the rest of a layer's stream (past the tar end marker, so that the diff_id
/// covers every byte) and returns its diff_id and size, checked against `expected`.
pub(super) fn finish_layer_tar<R: Read>(
    archive: tar::Archive<TarGuard<Hashing<R>>>,
    expected: Option<&Digest>,
) -> Result<(Digest, u64), LayerError> {
    let mut rest = archive.into_inner().into_inner();
    io::copy(&mut rest, &mut io::sink())
        .map_err(malformed("cannot read the data after the tar end marker"))?;
    let (_, diff_id, bytes) = rest.finish();
    if let Some(expected) = expected
        && *expected != diff_id
    {
        return Err(LayerError::DiffIdMismatch {
            expected: expected.clone(),
            actual: diff_id,
        });
    }
    Ok((diff_id, bytes))
}

/// The set-group-ID bit of a mode.
const SET_GROUP_ID: u32 = 0o2000;

/// Unpacks a layer blob (gzip, zstd or plain tar, detected by magic bytes)
/// under `dest` (created if missing), computing its diff_id on the way.
///
/// Refuses, with an error naming the entry: absolute names, `..` escaping
/// the root, paths through a symlink, hardlinks to targets outside the layer
/// and `dest` or that do not exist, 0/0 character devices, and devices unless
/// [`UnpackOptions::allow_devices`]. Owners are set only when running as
/// root; overlayfs xattrs in the tar are ignored. Directory modes and mtimes
/// are set last, deepest first. The whole stream is read, past the tar end
/// marker, so the diff_id covers every byte.
pub fn unpack_layer(
    blob: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackInfo, LayerError> {
    fs::create_dir_all(dest).map_err(|e| LayerError::io("create", dest, e))?;
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LayerError::io("open", dest, e.into()))?;

    let is_root = rustix::process::geteuid().is_root();
    let owned_by_root = is_root && rustix::process::getegid().is_root();
    let mut archive = open_layer_tar(blob)?;
    let mut unpacker = Unpacker {
        dest,
        root,
        opts,
        is_root,
        owned_by_root,
        last_dir: None,
        passes_group: true,
        tree: PathTree::new(),
        entries: 0,
        buf: vec![0; 128 * 1024],
    };
    for entry in archive
        .entries()
        .map_err(malformed("cannot read the tar stream"))?
    {
        let mut entry = entry.map_err(|source| {
            match source
                .get_ref()
                .and_then(|e| e.downcast_ref::<ExtensionTooLarge>())
            {
                Some(e) => LayerError::TooLarge {
                    entry: e.name.clone(),
                    reason: e.to_string(),
                },
                None => LayerError::Malformed {
                    reason: "cannot read a tar header".into(),
                    source,
                },
            }
        })?;
        unpacker.entry(&mut entry)?;
    }
    let (diff_id, bytes) = finish_layer_tar(archive, opts.expected_diff_id.as_ref())?;
    unpacker.finish()?;
    Ok(UnpackInfo {
        diff_id,
        entries: unpacker.entries,
        bytes,
    })
}

/// Ownership, permissions, time and xattrs of an entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn timestamps(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

/// What kind of thing an entry creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    Char,
    Block,
}

/// State of one unpack.
struct Unpacker<'a> {
    dest: &'a Path,
    /// `dest`, opened `O_PATH`.
    root: OwnedFd,
    opts: &'a UnpackOptions,
    is_root: bool,
    /// Whether what this unpack creates is owned by 0:0 without a chown: kiln runs as
    /// root with group 0. An entry owned by 0:0 (most of an image) then needs no chown,
    /// unless its directory passes its own group down ([`Unpacker::passes_group`]).
    owned_by_root: bool,
    /// Whether the directory [`Unpacker::open`] gave last has the set-group-ID bit (what
    /// is created in it takes its group): a directory of an earlier layer, in an export
    /// that unpacks several into one tree, or a destination made so.
    passes_group: bool,
    /// The directory the last entry went into (entries of a directory come together in
    /// a layer): opened again only when another one is asked for, or when anything was
    /// removed since (a removal can replace the directory the fd names).
    last_dir: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Paths this layer has entries for: in [`WhiteoutMode::Apply`], which paths (and
    /// their ancestors) its own whiteouts must not delete ([`PathNode::seen`]); and the
    /// directories whose mode and mtime are set at the end ([`PathNode::dir`]).
    tree: PathTree,
    entries: u64,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = entry.path_bytes().into_owned();
        let shown = shown_name(&raw);
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            return Ok(());
        }
        self.entries += 1;
        if raw.len() > MAX_PATH_LEN {
            return Err(LayerError::TooLarge {
                entry: shown,
                reason: format!(
                    "its name is {} bytes long, over the limit of {MAX_PATH_LEN}",
                    raw.len()
                ),
            });
        }
        let rel = normalize(&raw).map_err(|r| LayerError::unsafe_entry(&shown, r))?;
        let depth = rel.iter().filter(|b| **b == b'/').count() + 1;
        if depth > MAX_PATH_DEPTH {
            return Err(LayerError::TooLarge {
                entry: shown,
                reason: format!(
                    "its name has {depth} components, over the limit of {MAX_PATH_DEPTH}"
                ),
            });
        }
        let (parent, base) = split_last(&rel);
        if self.opts.whiteouts != WhiteoutMode::Oci && base.starts_with(WHITEOUT_PREFIX.as_bytes())
        {
            return self.whiteout(parent, base, &shown);
        }

        let kind = match etype {
            // Old (v7) archives mark directories as regular files named `dir/`.
            EntryType::Regular if raw.ends_with(b"/") => Kind::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Fifo => Kind::Fifo,
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            other => {
                return Err(LayerError::Unsupported {
                    entry: shown,
                    reason: format!("tar entry type {:?}", other.as_byte() as char),
                });
            }
        };
        if rel.is_empty() && kind != Kind::Dir {
            return Err(LayerError::unsafe_entry(
                &shown,
                "only a directory can name the destination root",
            ));
        }
        let meta = self.read_meta(entry, &shown)?;

        // Everything that can be refused without touching the filesystem.
        let mut dev = 0;
        if matches!(kind, Kind::Char | Kind::Block) {
            let header = entry.header();
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            if kind == Kind::Char && major == 0 && minor == 0 {
                return Err(LayerError::unsafe_entry(
                    &shown,
                    "a 0/0 character device is an overlayfs whiteout, not layer content",
                ));
            }
            match (self.is_root, self.opts.allow_devices) {
                (true, true) => {}
                (true, false) => {
                    return Err(LayerError::unsafe_entry(
                        &shown,
                        "device nodes are not allowed (allow_devices is off)",
                    ));
                }
                (false, true) => {
                    return Err(LayerError::Unsupported {
                        entry: shown,
                        reason: "device nodes can only be created as root".into(),
                    });
                }
                (false, false) => return Ok(()),
            }
            dev = rustix::fs::makedev(major, minor);
        }
        let link_target = match kind {
            Kind::Symlink | Kind::Hardlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(LayerError::unsafe_entry(&shown, "empty link target"));
                }
                if target.contains(&0) {
                    return Err(LayerError::unsafe_entry(&shown, "NUL byte in link target"));
                }
                if target.len() > MAX_PATH_LEN {
                    return Err(LayerError::TooLarge {
                        entry: shown,
                        reason: format!(
                            "its link target is {} bytes long, over the limit of {MAX_PATH_LEN}",
                            target.len()
                        ),
                    });
                }
                target
            }
            _ => Vec::new(),
        };
        let link = if kind == Kind::Hardlink {
            Some(self.resolve_link_target(&link_target, &rel, &shown)?)
        } else {
            None
        };

        let (pfd, name): (Rc<OwnedFd>, &[u8]) = if rel.is_empty() {
            (self.open(&[], &shown)?, b".")
        } else {
            (self.open(parent, &shown)?, base)
        };
        let pfd: &OwnedFd = &pfd;
        let existing = file_type_at(pfd, name).map_err(|e| self.io_err("stat", &rel, e))?;
        if existing.is_some() && !(kind == Kind::Dir && existing == Some(FileType::Directory)) {
            self.remove_at(pfd, name)
                .map_err(|e| self.io_err("replace", &rel, e))?;
        }

        match kind {
            Kind::File => self.write_file(entry, pfd, name, &rel, &shown, &meta)?,
            Kind::Dir => {
                let made = existing != Some(FileType::Directory);
                if made {
                    rustix::fs::mkdirat(pfd, os(name), Mode::from_raw_mode(0o700))
                        .map_err(|e| self.io_err("create directory", &rel, e.into()))?;
                }
                // One that was there (an earlier entry's parent, or listed twice) keeps
                // the owner it had: set it.
                if !made || self.needs_chown(&meta) {
                    self.chown_at(pfd, name, &rel, &meta)?;
                }
                self.set_xattrs_path(&rel, &meta)?;
                let id = self.tree.insert(&rel);
                self.tree.nodes[id].dir = Some((meta.mode, meta.mtime));
            }
            Kind::Symlink => {
                rustix::fs::symlinkat(os(&link_target), pfd, os(name))
                    .map_err(|e| self.io_err("create symlink", &rel, e.into()))?;
                if self.needs_chown(&meta) {
                    self.chown_at(pfd, name, &rel, &meta)?;
                }
                self.set_xattrs_path(&rel, &meta)?;
                self.set_times_at(pfd, name, &rel, &meta)?;
            }
            Kind::Hardlink => {
                if let Some((tfd, target)) = &link {
                    // Without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
                    rustix::fs::linkat(
                        tfd,
                        os(split_last(target).1),
                        pfd,
                        os(name),
                        AtFlags::empty(),
                    )
                    .map_err(|e| self.io_err("create hardlink", &rel, e.into()))?;
                }
            }
            Kind::Fifo | Kind::Char | Kind::Block => {
                let ft = match kind {
                    Kind::Fifo => FileType::Fifo,
                    Kind::Char => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                rustix::fs::mknodat(pfd, os(name), ft, Mode::empty(), dev)
                    .map_err(|e| self.io_err("create special file", &rel, e.into()))?;
                if self.needs_chown(&meta) {
                    self.chown_at(pfd, name, &rel, &meta)?;
                }
                rustix::fs::chmodat(
                    pfd,
                    os(name),
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(|e| self.io_err("chmod", &rel, e.into()))?;
                self.set_xattrs_path(&rel, &meta)?;
                self.set_times_at(pfd, name, &rel, &meta)?;
            }
        }
        self.mark_seen(&rel);
        Ok(())
    }

    /// Creates a regular file and copies the entry's data into it.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pfd: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        shown: &str,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let fd = rustix::fs::openat(
            pfd,
            os(name),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.io_err("create", rel, e.into()))?;
        let mut file = File::from(fd);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(LayerError::Malformed {
                        reason: format!("cannot read the data of {shown:?}"),
                        source,
                    });
                }
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| self.io_err("write", rel, e))?;
        }
        if self.needs_chown(meta) {
            rustix::fs::fchown(
                &file,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.io_err("chown", rel, e.into()))?;
        }
        // After chown, which clears setuid/setgid.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))
            .map_err(|e| self.io_err("chmod", rel, e.into()))?;
        for (key, value) in &meta.xattrs {
            let res = rustix::fs::fsetxattr(&file, os(key), value, XattrFlags::empty());
            self.xattr_result(res, rel, key)?;
        }
        rustix::fs::futimens(&file, &meta.timestamps())
            .map_err(|e| self.io_err("set times of", rel, e.into()))?;
        Ok(())
    }

    /// Resolves a hardlink's target (a tar name) inside `dest` without
    /// following symlinks: returns its parent directory fd and its
    /// normalised path. The target must exist and not be a directory.
    fn resolve_link_target(
        &self,
        target: &[u8],
        rel: &[u8],
        shown: &str,
    ) -> Result<(OwnedFd, Vec<u8>), LayerError> {
        let refuse = |reason: String| LayerError::unsafe_entry(shown, reason);
        let target_shown = shown_name(target);
        let norm = normalize(target)
            .map_err(|r| refuse(format!("hardlink target {target_shown:?}: {r}")))?;
        if norm.is_empty() {
            return Err(refuse("hardlink to the destination root".into()));
        }
        if norm == rel {
            return Err(refuse("hardlink to itself".into()));
        }
        let (tparent, tbase) = split_last(&norm);
        let tfd = match open_dir(&self.root, tparent, false, |_| {}) {
            Ok(fd) => fd,
            Err(OpenDirError::Missing) => {
                return Err(refuse(format!(
                    "hardlink target {target_shown:?} does not exist"
                )));
            }
            Err(OpenDirError::NotDir(p)) => {
                return Err(refuse(format!(
                    "hardlink target {target_shown:?} goes through {:?}, a symlink or not a directory",
                    String::from_utf8_lossy(&p)
                )));
            }
            Err(OpenDirError::Io(e)) => return Err(self.io_err("open", tparent, e)),
        };
        match file_type_at(&tfd, tbase).map_err(|e| self.io_err("stat", &norm, e))? {
            None => Err(refuse(format!(
                "hardlink target {target_shown:?} does not exist"
            ))),
            Some(FileType::Directory) => Err(refuse(format!(
                "hardlink target {target_shown:?} is a directory"
            ))),
            Some(_) => Ok((tfd, norm)),
        }
    }

    /// Handles `.wh.*` entries in [`WhiteoutMode::Overlay`] and
    /// [`WhiteoutMode::Apply`].
    fn whiteout(&mut self, parent: &[u8], base: &[u8], shown: &str) -> Result<(), LayerError> {
        if base == OPAQUE_WHITEOUT.as_bytes() {
            return self.opaque(parent, shown);
        }
        if base.starts_with(META_PREFIX) {
            // AUFS metadata (.wh..wh.plnk, ...): meaningless here.
            return Ok(());
        }
        let name = &base[WHITEOUT_PREFIX.len()..];
        if name.is_empty() || name == b"." || name == b".." {
            return Err(LayerError::unsafe_entry(shown, "invalid whiteout name"));
        }
        let target = join(parent, name);
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                let pfd = self.open(parent, shown)?;
                self.remove_at(&pfd, name)
                    .map_err(|e| self.io_err("replace", &target, e))?;
                rustix::fs::mknodat(&pfd, os(name), FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(|e| self.io_err("create whiteout device", &target, e.into()))?;
            }
            WhiteoutMode::Apply => {
                // Whiteouts only hide what lower layers have.
                if self.tree.is_seen(&target) {
                    return Ok(());
                }
                let Some(pfd) = self.open_existing(parent, shown)? else {
                    return Ok(());
                };
                self.remove_at(&pfd, name)
                    .map_err(|e| self.io_err("delete", &target, e))?;
            }
            // Never routed here: in Oci mode `.wh.` entries are plain files.
            WhiteoutMode::Oci => {}
        }
        Ok(())
    }

    /// Handles `.wh..wh..opq` in directory `dir`.
    fn opaque(&mut self, dir: &[u8], shown: &str) -> Result<(), LayerError> {
        if dir.is_empty() {
            // At the layer's root the marker means nothing: overlayfs ignores opaqueness
            // on a lower layer's root, and RUN steps (and BuildKit's default overlay
            // snapshotter) see layers through it. Emptying the rootfs here would make
            // `--output type=local` differ from what every RUN step saw.
            return Ok(());
        }
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                self.open(dir, shown)?;
                let key = if self.is_root {
                    TRUSTED_OPAQUE_XATTR
                } else {
                    USER_OPAQUE_XATTR
                };
                rustix::fs::lsetxattr(self.full_path(dir), key, b"y", XattrFlags::empty())
                    .map_err(|e| self.io_err("mark opaque", dir, e.into()))?;
            }
            WhiteoutMode::Apply => {
                if self.open_existing(dir, shown)?.is_some() {
                    self.purge(dir)
                        .map_err(|e| self.io_err("empty opaque directory", dir, e))?;
                }
                self.mark_seen(dir);
            }
            // Never routed here: in Oci mode `.wh.` entries are plain files.
            WhiteoutMode::Oci => {}
        }
        Ok(())
    }

    /// Deletes everything under directory `path` that this layer has no entry for,
    /// keeping (and descending into) what it has. Iterative: one directory open at a
    /// time, whatever the depth.
    fn purge(&mut self, path: &[u8]) -> io::Result<()> {
        self.last_dir = None;
        let start = self.tree.insert(path);
        let mut stack = vec![start];
        while let Some(id) = stack.pop() {
            let dir = self.tree.path(id);
            let fd = match open_dir(&self.root, &dir, false, |_| {}) {
                Ok(fd) => fd,
                Err(OpenDirError::Io(e)) => return Err(e),
                Err(_) => continue,
            };
            for (name, _) in list_dir(&fd)? {
                match self.tree.child(id, &name) {
                    Some(c) if self.tree.nodes[c].seen => {
                        if file_type_at(&fd, &name)? == Some(FileType::Directory) {
                            stack.push(c);
                        }
                    }
                    _ => remove_all_at(&fd, &name)?,
                }
            }
        }
        Ok(())
    }

    /// Sets the deferred directory modes and mtimes, deepest first (a node is always
    /// added after its parent, so reverse order visits children first).
    fn finish(&mut self) -> Result<(), LayerError> {
        for id in (0..self.tree.nodes.len()).rev() {
            let Some((mode, mtime)) = self.tree.nodes[id].dir else {
                continue;
            };
            let rel = self.tree.path(id);
            let (parent, base) = split_last(&rel);
            let name: &[u8] = if rel.is_empty() { b"." } else { base };
            // The directory may have been replaced or deleted by a later entry.
            let pfd = match open_dir(&self.root, parent, false, |_| {}) {
                Ok(fd) => fd,
                Err(OpenDirError::Io(e)) => return Err(self.io_err("open", parent, e)),
                Err(_) => continue,
            };
            if file_type_at(&pfd, name).map_err(|e| self.io_err("stat", &rel, e))?
                != Some(FileType::Directory)
            {
                continue;
            }
            rustix::fs::chmodat(&pfd, os(name), Mode::from_raw_mode(mode), AtFlags::empty())
                .map_err(|e| self.io_err("chmod", &rel, e.into()))?;
            let times = Timestamps {
                last_access: mtime,
                last_modification: mtime,
            };
            rustix::fs::utimensat(&pfd, os(name), &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.io_err("set times of", &rel, e.into()))?;
        }
        Ok(())
    }

    /// Reads mode, owner, mtime and xattrs from the entry's headers.
    fn read_meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Meta, LayerError> {
        let header = entry.header();
        let bad = |what: &str, e: io::Error| LayerError::Malformed {
            reason: format!("bad {what} in the header of {shown:?}"),
            source: e,
        };
        let old = header.as_old();
        let mode = lenient(header.mode(), &old.mode).map_err(|e| bad("mode", e))? & 0o7777;
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| LayerError::Unsupported {
                    entry: shown.to_owned(),
                    reason: format!("{what} {v} out of range"),
                })
        };
        let uid = id(
            lenient(header.uid(), &old.uid).map_err(|e| bad("uid", e))?,
            "uid",
        )?;
        let gid = id(
            lenient(header.gid(), &old.gid).map_err(|e| bad("gid", e))?,
            "gid",
        )?;
        let secs = lenient(header.mtime(), &old.mtime).map_err(|e| bad("mtime", e))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("PAX header", e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("PAX record", e))?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        mtime = t;
                    }
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    // overlayfs' xattrs would forge whiteouts: never taken from a layer.
                    if !name.is_empty() && !is_overlay_xattr(name) && !name.contains(&0) {
                        let value = ext.value_bytes();
                        if name.len() > MAX_XATTR_NAME || value.len() > MAX_XATTR_VALUE {
                            return Err(LayerError::TooLarge {
                                entry: shown.to_owned(),
                                reason: format!(
                                    "xattr {:?} has a {}-byte name and a {}-byte value; Linux allows {MAX_XATTR_NAME} and {MAX_XATTR_VALUE}",
                                    shown_name(name),
                                    name.len(),
                                    value.len()
                                ),
                            });
                        }
                        xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Opens directory `path` under `dest`, creating missing components.
    fn open(&mut self, path: &[u8], shown: &str) -> Result<Rc<OwnedFd>, LayerError> {
        if let Some((last, fd)) = &self.last_dir
            && last.as_slice() == path
        {
            return Ok(fd.clone());
        }
        // Created components are consecutive: marking the deepest marks them all (and
        // copying each one's path would cost memory quadratic in the depth).
        let mut created = None;
        let res = open_dir(&self.root, path, true, |p| created = Some(p.len()));
        if let Some(len) = created {
            self.mark_seen(&path[..len]);
        }
        let fd = Rc::new(self.open_result(res, path, shown)?.ok_or_else(|| {
            self.io_err(
                "create directory",
                path,
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?);
        // Its mode stays as it is until `finish` (a directory entry's is set there).
        self.passes_group =
            rustix::fs::fstat(&*fd).map_or(true, |st| st.st_mode & SET_GROUP_ID != 0);
        self.last_dir = Some((path.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Removes `name` (recursively) from the directory `pfd`; the directory kept open for
    /// the next entry is forgotten, as it may be what went.
    fn remove_at(&mut self, pfd: &OwnedFd, name: &[u8]) -> io::Result<()> {
        self.last_dir = None;
        remove_all_at(pfd, name)
    }

    /// Opens directory `path` under `dest`; `None` if it does not exist.
    fn open_existing(&self, path: &[u8], shown: &str) -> Result<Option<OwnedFd>, LayerError> {
        let res = open_dir(&self.root, path, false, |_| {});
        self.open_result(res, path, shown)
    }

    fn open_result(
        &self,
        res: Result<OwnedFd, OpenDirError>,
        path: &[u8],
        shown: &str,
    ) -> Result<Option<OwnedFd>, LayerError> {
        match res {
            Ok(fd) => Ok(Some(fd)),
            Err(OpenDirError::Missing) => Ok(None),
            Err(OpenDirError::NotDir(p)) => {
                let what = match open_dir(&self.root, split_last(&p).0, false, |_| {}) {
                    Ok(fd)
                        if file_type_at(&fd, split_last(&p).1).ok().flatten()
                            == Some(FileType::Symlink) =>
                    {
                        "a symlink"
                    }
                    _ => "not a directory",
                };
                Err(LayerError::unsafe_entry(
                    shown,
                    format!(
                        "its parent path goes through {:?}, which is {what}",
                        String::from_utf8_lossy(&p)
                    ),
                ))
            }
            Err(OpenDirError::Io(e)) => Err(self.io_err("open", path, e)),
        }
    }

    /// Records `path` and its ancestors as present in this layer.
    fn mark_seen(&mut self, path: &[u8]) {
        if self.opts.whiteouts != WhiteoutMode::Apply {
            return;
        }
        let mut id = self.tree.insert(path);
        // Ancestors of a seen node are seen: stop at the first one.
        while id != PathTree::ROOT && !self.tree.nodes[id].seen {
            self.tree.nodes[id].seen = true;
            id = self.tree.nodes[id].parent;
        }
    }

    /// Whether an entry this unpack just created, in the directory [`Unpacker::open`]
    /// gave last, must be chowned to `meta`'s owner: as root, unless it is 0:0 and was
    /// created so ([`Unpacker::owned_by_root`], and a directory that passes no group).
    fn needs_chown(&self, meta: &Meta) -> bool {
        self.is_root
            && !(self.owned_by_root && !self.passes_group && meta.uid == 0 && meta.gid == 0)
    }

    fn chown_at(
        &self,
        pfd: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
    ) -> Result<(), LayerError> {
        if !self.is_root {
            return Ok(());
        }
        rustix::fs::chownat(
            pfd,
            os(name),
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io_err("chown", rel, e.into()))
    }

    fn set_times_at(
        &self,
        pfd: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
    ) -> Result<(), LayerError> {
        rustix::fs::utimensat(pfd, os(name), &meta.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io_err("set times of", rel, e.into()))
    }

    /// Sets xattrs by path, without following a final symlink. The parents
    /// were just checked to be real directories.
    fn set_xattrs_path(&self, rel: &[u8], meta: &Meta) -> Result<(), LayerError> {
        if meta.xattrs.is_empty() {
            return Ok(());
        }
        let path = self.full_path(rel);
        for (key, value) in &meta.xattrs {
            let res = rustix::fs::lsetxattr(&path, os(key), value, XattrFlags::empty());
            self.xattr_result(res, rel, key)?;
        }
        Ok(())
    }

    /// Unsupported xattrs are skipped (filesystems without them), and so are
    /// privileged namespaces when not root.
    fn xattr_result(
        &self,
        res: rustix::io::Result<()>,
        rel: &[u8],
        key: &[u8],
    ) -> Result<(), LayerError> {
        match res {
            Ok(()) => Ok(()),
            Err(Errno::NOTSUP) => Ok(()),
            Err(Errno::PERM | Errno::ACCESS) if !self.is_root => Ok(()),
            Err(e) => Err(LayerError::io(
                "set xattr",
                self.full_path(rel)
                    .join(format!("@{}", String::from_utf8_lossy(key))),
                e.into(),
            )),
        }
    }

    fn full_path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.dest.to_path_buf()
        } else {
            self.dest.join(os(rel))
        }
    }

    fn io_err(&self, op: &'static str, rel: &[u8], e: io::Error) -> LayerError {
        LayerError::io(op, self.full_path(rel), e)
    }
}

/// An entry name for messages: whole up to 256 bytes, else its start, its end and its
/// length (an error must not echo a megabyte of name).
fn shown_name(raw: &[u8]) -> String {
    const KEEP: usize = 100;
    if raw.len() <= 256 {
        return String::from_utf8_lossy(raw).into_owned();
    }
    format!(
        "{}...{} ({} bytes)",
        String::from_utf8_lossy(&raw[..KEEP]),
        String::from_utf8_lossy(&raw[raw.len() - KEEP..]),
        raw.len()
    )
}

/// One path component known to the unpacker.
struct PathNode {
    parent: usize,
    name: Box<[u8]>,
    /// [`WhiteoutMode::Apply`]: this layer has an entry at or under this path.
    seen: bool,
    /// A directory entry of this layer: its mode and mtime, set at the end.
    dir: Option<(u32, Timespec)>,
}

/// The paths an unpack remembers, as a tree of components: each node holds one name, so
/// memory grows with the number of paths, never with their depth (a set of whole paths
/// holds every ancestor's full path: quadratic in the depth).
struct PathTree {
    nodes: Vec<PathNode>,
    children: HashMap<(usize, Box<[u8]>), usize>,
}

impl PathTree {
    /// The node of the destination root (the empty path).
    const ROOT: usize = 0;

    fn new() -> Self {
        PathTree {
            nodes: vec![PathNode {
                parent: Self::ROOT,
                name: Box::default(),
                seen: false,
                dir: None,
            }],
            children: HashMap::new(),
        }
    }

    fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
        path.split(|b| *b == b'/').filter(|c| !c.is_empty())
    }

    fn child(&self, parent: usize, name: &[u8]) -> Option<usize> {
        // A borrowed key cannot look up a `(usize, Box<[u8]>)`: build the owned one.
        self.children.get(&(parent, Box::from(name))).copied()
    }

    /// The node of a normalised path, added (with its ancestors) if missing.
    fn insert(&mut self, path: &[u8]) -> usize {
        let mut id = Self::ROOT;
        for comp in Self::components(path) {
            id = match self.child(id, comp) {
                Some(c) => c,
                None => {
                    let c = self.nodes.len();
                    self.nodes.push(PathNode {
                        parent: id,
                        name: Box::from(comp),
                        seen: false,
                        dir: None,
                    });
                    self.children.insert((id, Box::from(comp)), c);
                    c
                }
            };
        }
        id
    }

    fn is_seen(&self, path: &[u8]) -> bool {
        let mut id = Self::ROOT;
        for comp in Self::components(path) {
            match self.child(id, comp) {
                Some(c) => id = c,
                None => return false,
            }
        }
        self.nodes[id].seen
    }

    /// The normalised path of a node.
    fn path(&self, mut id: usize) -> Vec<u8> {
        let mut comps = Vec::new();
        while id != Self::ROOT {
            comps.push(&*self.nodes[id].name);
            id = self.nodes[id].parent;
        }
        comps.reverse();
        comps.join(&b'/')
    }
}

/// A numeric header field, where an empty field (all NULs or spaces, as
/// some writers leave unused fields) reads as 0, as Go's archive/tar does.
fn lenient<T: Default>(parsed: io::Result<T>, raw: &[u8]) -> io::Result<T> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(T::default()),
        other => other,
    }
}

/// Parses a PAX time (`"1700000000"`, `"1700000000.5"`, `"-1.25"`).
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(value).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let negative = int.starts_with('-');
    let mut secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nsec: i64 = digits.parse().ok()?;
    if negative && nsec > 0 {
        secs -= 1;
        nsec = 1_000_000_000 - nsec;
    }
    Some(Timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    })
}
