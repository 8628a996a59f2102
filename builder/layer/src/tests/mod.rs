//! Tests of the layer module, with helpers shared by its test files.
//!
//! Tests that need root (chown, devices, trusted.* xattrs) check
//! `geteuid() == 0`; CI and the development machines run as root, so they
//! run there.

mod bombs;
mod chunks;
mod determinism;
mod malicious;
mod roundtrip;
mod tools;
mod unit;
mod whiteouts;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use rustix::fs::{FileType, Mode};
use tar::{EntryType, Header};

use super::compression::detect;
use super::{Compression, LayerInfo, LayerOptions, write_layer};

/// Whether the tests run as root: the root-only parts of a test (owners, device nodes,
/// `trusted.*` xattrs) run only then. Otherwise those parts are reported skipped on a
/// developer's machine, and fail the test when `CI` is set (CI runs as root).
fn is_root() -> bool {
    kiln_test_support::require::check_root()
}

/// Options with a compression and an optional SOURCE_DATE_EPOCH.
fn opts(compression: Compression, epoch: Option<i64>) -> LayerOptions {
    LayerOptions {
        compression,
        source_date_epoch: epoch,
        skip: None,
        chunk_cache: None,
    }
}

/// Writes `dir` as a layer into memory.
fn write_vec(dir: &Path, opts: &LayerOptions) -> (LayerInfo, Vec<u8>) {
    let mut out = Vec::new();
    let info = write_layer(dir, opts, &mut out).expect("write_layer");
    (info, out)
}

/// Decompresses a blob (any of the three formats).
fn decompress(blob: &[u8]) -> Vec<u8> {
    let (_, mut d) = detect(blob).expect("detect");
    let mut out = Vec::new();
    d.read_to_end(&mut out).expect("decompress");
    out
}

/// One entry of a tar as parsed back with the `tar` crate.
#[derive(Debug, Clone)]
struct TarEntry {
    name: String,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: Option<String>,
    pax: BTreeMap<String, Vec<u8>>,
    dev: (u32, u32),
    uname: Vec<u8>,
    gname: Vec<u8>,
    data: Vec<u8>,
}

/// Parses an uncompressed tar.
fn tar_entries(tar_bytes: &[u8]) -> Vec<TarEntry> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in archive.entries().expect("entries") {
        let mut e = e.expect("entry");
        let mut pax = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().expect("pax") {
            for ext in exts {
                let ext = ext.expect("pax record");
                pax.insert(ext.key().unwrap().to_owned(), ext.value_bytes().to_vec());
            }
        }
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        out.push(TarEntry {
            name: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            size: e.size(),
            link: e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned()),
            pax,
            dev: (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            ),
            uname: h.username_bytes().unwrap_or_default().to_vec(),
            gname: h.groupname_bytes().unwrap_or_default().to_vec(),
            data,
        });
    }
    out
}

/// What a file looks like, for comparing trees.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    data: Option<Vec<u8>>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    rdev: u64,
    mtime: i64,
    /// For non-directories with several links: the first path (in sorted
    /// order) sharing the inode.
    hardlink_of: Option<String>,
}

/// Every path under `dir` (not `dir` itself), by relative path.
fn snapshot(dir: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
    {
        let entry = entry.expect("walk");
        let path = entry.path();
        let rel = path
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(path).expect("lstat");
        let ft = FileType::from_raw_mode(meta.mode());
        let kind = match ft {
            FileType::RegularFile => "file",
            FileType::Directory => "dir",
            FileType::Symlink => "symlink",
            FileType::Fifo => "fifo",
            FileType::CharacterDevice => "char",
            FileType::BlockDevice => "block",
            FileType::Socket => "socket",
            _ => "unknown",
        };
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(path).expect("list xattrs") {
            let value = xattr::get(path, &name)
                .expect("get xattr")
                .unwrap_or_default();
            xattrs.insert(name.to_string_lossy().into_owned(), value);
        }
        let hardlink_of = if ft != FileType::Directory && meta.nlink() > 1 {
            Some(
                inodes
                    .entry(meta.ino())
                    .or_insert_with(|| rel.clone())
                    .clone(),
            )
        } else {
            None
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: if ft == FileType::Directory {
                    0
                } else {
                    meta.len()
                },
                data: (ft == FileType::RegularFile).then(|| fs::read(path).expect("read")),
                link: (ft == FileType::Symlink).then(|| fs::read_link(path).expect("readlink")),
                xattrs,
                rdev: meta.rdev(),
                mtime: meta.mtime(),
                hardlink_of,
            },
        );
    }
    out
}

/// Writes a file, creating its parent directories.
fn write_file(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Sets a path's mode exactly (not through the umask).
fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Creates a special file.
fn mknod(path: &Path, ft: FileType, mode: u32, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        ft,
        Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

/// Sets the mtime (and atime) of every path under `dir`, not following
/// symlinks: `base + i` for the i-th path in sorted order.
fn set_all_mtimes(dir: &Path, base: i64) {
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    paths.sort();
    for (i, p) in paths.iter().enumerate() {
        let t = FileTime::from_unix_time(base + i as i64, 0);
        filetime::set_symlink_file_times(p, t, t).unwrap();
    }
}

/// A name longer than the 100-byte ustar field (and than the 155-byte
/// prefix), nested in directories.
const LONG_DIR: &str = "long-directory-name-number-one-that-goes-on-and-on-and-on/\
                        long-directory-name-number-two-that-goes-on-and-on-and-on";
const LONG_FILE: &str =
    "a-file-whose-name-alone-is-long-enough-to-need-pax-records-in-ustar-archives-0123456789.txt";

/// Builds the round-trip tree: files, dirs, symlinks, a hardlink pair, an
/// empty dir, long names, xattrs, special modes, a FIFO and, as root,
/// owners and a character device.
fn build_rich_tree(dir: &Path) {
    write_file(&dir.join("etc/hostname"), b"kiln\n");
    write_file(&dir.join("etc/hosts"), b"127.0.0.1 localhost\n");
    write_file(
        &dir.join("usr/bin/tool"),
        &[0x7f, b'E', b'L', b'F', 0, 1, 2, 3],
    );
    chmod(&dir.join("usr/bin/tool"), 0o4755);
    write_file(&dir.join("usr/share/big.bin"), &pseudo_random(300_000, 7));
    write_file(&dir.join("empty-file"), b"");
    fs::create_dir_all(dir.join("empty-dir")).unwrap();
    fs::create_dir_all(dir.join("shared")).unwrap();
    chmod(&dir.join("shared"), 0o2775);
    fs::create_dir_all(dir.join("tmp")).unwrap();
    chmod(&dir.join("tmp"), 0o1777);
    std::os::unix::fs::symlink("hostname", dir.join("etc/alias")).unwrap();
    std::os::unix::fs::symlink("/etc/hosts", dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../does/not/exist", dir.join("etc/dangling")).unwrap();
    // Hardlink pair: "usr/bin/tool" sorts before "usr/bin/tool2".
    fs::hard_link(dir.join("usr/bin/tool"), dir.join("usr/bin/tool2")).unwrap();
    fs::hard_link(dir.join("etc/hosts"), dir.join("z-hosts-link")).unwrap();
    let long = dir.join(LONG_DIR).join(LONG_FILE);
    write_file(&long, b"long\n");
    let long_target = format!("{LONG_DIR}/{LONG_FILE}");
    std::os::unix::fs::symlink(&long_target, dir.join("link-to-long")).unwrap();
    xattr::set(dir.join("etc/hostname"), "user.test", b"hello").unwrap();
    xattr::set(dir.join("etc"), "user.dir-attr", b"\x00binary\xff").unwrap();
    mknod(&dir.join("pipe"), FileType::Fifo, 0o640, 0, 0);
    if is_root() {
        rustix::fs::chown(
            dir.join("etc/hosts").as_path(),
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(5678)),
        )
        .unwrap();
        rustix::fs::chownat(
            rustix::fs::CWD,
            dir.join("etc/alias").as_path(),
            Some(rustix::fs::Uid::from_raw(42)),
            Some(rustix::fs::Gid::from_raw(43)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        // chown clears setuid: set it again.
        rustix::fs::chown(
            dir.join("usr/bin/tool").as_path(),
            Some(rustix::fs::Uid::from_raw(0)),
            Some(rustix::fs::Gid::from_raw(50)),
        )
        .unwrap();
        chmod(&dir.join("usr/bin/tool"), 0o4755);
        mknod(
            &dir.join("dev-null"),
            FileType::CharacterDevice,
            0o666,
            1,
            3,
        );
        xattr::set(dir.join("usr/bin/tool"), "trusted.kiln", b"t").unwrap();
        // Ids too large for ustar's octal fields: PAX uid/gid records.
        write_file(&dir.join("etc/big-ids"), b"big");
        rustix::fs::chown(
            dir.join("etc/big-ids").as_path(),
            Some(rustix::fs::Uid::from_raw(3_000_000)),
            Some(rustix::fs::Gid::from_raw(4_000_000)),
        )
        .unwrap();
    }
    set_all_mtimes(dir, 1_600_000_000);
}

/// Deterministic pseudo-random bytes with some repetition (compressible).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let words: [&[u8]; 8] = [
        b"layer ", b"kiln ", b"oci ", b"digest ", b"tar ", b"gzip ", b"zstd ", b"\n",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if x >> 62 == 0 {
            out.push((x >> 33) as u8);
        } else {
            out.extend_from_slice(words[((x >> 40) & 7) as usize]);
        }
    }
    out.truncate(len);
    out
}

/// A raw tar entry for hand-made (malicious) archives: the name and link
/// name are written into the header bytes as given, bypassing the checks of
/// `tar::Builder`.
struct Raw<'a> {
    name: &'a [u8],
    kind: EntryType,
    link: &'a [u8],
    data: &'a [u8],
    mode: u32,
    dev: (u32, u32),
}

fn raw_file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        kind: EntryType::Regular,
        link: b"",
        data,
        mode: 0o644,
        dev: (0, 0),
    }
}

fn raw_dir(name: &str) -> Raw<'_> {
    Raw {
        name: name.as_bytes(),
        kind: EntryType::Directory,
        link: b"",
        data: b"",
        mode: 0o755,
        dev: (0, 0),
    }
}

fn raw_symlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        kind: EntryType::Symlink,
        link: target.as_bytes(),
        data: b"",
        mode: 0o777,
        dev: (0, 0),
    }
}

fn raw_hardlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        kind: EntryType::Link,
        ..raw_symlink(name, target)
    }
}

fn raw_device(name: &str, kind: EntryType, major: u32, minor: u32) -> Raw<'_> {
    Raw {
        name: name.as_bytes(),
        kind,
        link: b"",
        data: b"",
        mode: 0o666,
        dev: (major, minor),
    }
}

/// Builds an uncompressed tar from raw entries.
fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_ustar();
        assert!(e.name.len() <= 100 && e.link.len() <= 100);
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(e.data.len() as u64);
        h.set_device_major(e.dev.0).unwrap();
        h.set_device_minor(e.dev.1).unwrap();
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Path bytes of a path, for building entry names.
fn path_str(p: &Path) -> String {
    String::from_utf8(p.as_os_str().as_bytes().to_vec()).unwrap()
}
