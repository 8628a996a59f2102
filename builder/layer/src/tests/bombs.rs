//! Resource bombs (issue 9, finding 4): layers whose depth or extension records made the
//! unpacker's memory explode. Each is built by hand (large parts streamed, never held in
//! memory), and the unpack is checked to end quickly with a bounded peak RSS.

use std::fs;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use tar::EntryType;
use tempfile::tempdir;

use super::super::{LayerError, MAX_PATH_DEPTH, UnpackOptions, WhiteoutMode, unpack_layer};
use super::*;

/// Peak resident set of this process, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Unpacks `layer` in `mode` and returns the result, checking that it took less than
/// 200 MB of peak RSS growth and less than `max_time`. The peak is reset first
/// (`clear_refs` 5) so earlier tests do not hide this one's growth.
fn unpack_bounded(
    layer: impl Read,
    mode: WhiteoutMode,
    max_time: Duration,
) -> Result<(), LayerError> {
    let _ = fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss_kib();
    let start = Instant::now();
    let dir = tempdir().unwrap();
    let opts = UnpackOptions {
        whiteouts: mode,
        ..UnpackOptions::default()
    };
    let res = unpack_layer(layer, &dir.path().join("dest"), &opts).map(|_| ());
    let grew = peak_rss_kib().saturating_sub(before);
    assert!(
        grew < 200 * 1024,
        "{mode:?}: peak RSS grew by {} MB",
        grew / 1024
    );
    assert!(
        start.elapsed() < max_time,
        "{mode:?}: took {:?}",
        start.elapsed()
    );
    // Whatever is left must be removable by kiln's own cleanup.
    kiln_cache::remove_tree(dir.path()).expect("remove what the unpack left");
    res
}

const MODES: [WhiteoutMode; 3] = [
    WhiteoutMode::Oci,
    WhiteoutMode::Apply,
    WhiteoutMode::Overlay,
];

/// A ustar header block for an extension record or an entry, checksummed.
fn header_block(name: &str, kind: EntryType, size: u64) -> [u8; 512] {
    let mut h = Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h.set_cksum();
    *h.as_bytes()
}

/// Zero bytes padding `len` to a 512-byte boundary.
fn padding(len: u64) -> io::Take<io::Repeat> {
    io::repeat(0).take((512 - len % 512) % 512)
}

/// A PAX record `"<len> <key>=<value>\n"` whose value is `value_len` bytes of `fill`,
/// streamed: (the record's total length, a reader of it).
fn pax_record(key: &str, value_len: u64, fill: u8) -> (u64, impl Read) {
    let body = key.len() as u64 + value_len + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() as u64 {
        len = body + len.to_string().len() as u64;
    }
    let head = format!("{len} {key}=").into_bytes();
    let reader = io::Cursor::new(head)
        .chain(io::repeat(fill).take(value_len))
        .chain(&b"\n"[..]);
    (len, reader)
}

/// A layer: one extension record of `kind` with `data` (`len` bytes), then a file `f`
/// holding `x`, then the end-of-archive blocks.
fn layer_with_extension(kind: EntryType, len: u64, data: impl Read) -> impl Read {
    let file = raw_tar(&[raw_file("f", b"x")]);
    io::Cursor::new(header_block("././@LongLink", kind, len).to_vec())
        .chain(data)
        .chain(padding(len))
        .chain(io::Cursor::new(file))
}

// Regression: a 262-byte layer of 40,000 nested directories took 1.6 GB (every created
// ancestor's whole path was copied), and a 100 MB PAX path got kiln OOM-killed.
#[test]
fn depth_bomb_of_40000_levels_is_refused_quickly() {
    let name = "a/".repeat(40_000) + "f";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, &name, &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    for mode in MODES {
        let err = unpack_bounded(tar.as_slice(), mode, Duration::from_secs(20))
            .expect_err("a 80 KB name must be refused");
        assert!(matches!(err, LayerError::TooLarge { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("a/a/a/") && msg.contains("80001 bytes"),
            "{msg}"
        );
        assert!(msg.contains("over the limit of 4096"), "{msg}");
        assert!(msg.len() < 1000, "the error must not echo the whole name");
    }
}

#[test]
fn names_deeper_than_the_limit_are_refused_and_the_limit_itself_unpacks() {
    let ok = "d/".repeat(MAX_PATH_DEPTH - 1) + "f";
    let too_deep = "d/".repeat(MAX_PATH_DEPTH) + "f";
    for mode in MODES {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [(&ok, &b"ok"[..]), (&too_deep, &b"no"[..])] {
            let mut h = Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            h.set_entry_type(EntryType::Regular);
            b.append_data(&mut h, name, data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let dir = tempdir().unwrap();
        let opts = UnpackOptions {
            whiteouts: mode,
            ..UnpackOptions::default()
        };
        let err = unpack_layer(tar.as_slice(), dir.path(), &opts).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "{} components, over the limit of {MAX_PATH_DEPTH}",
                MAX_PATH_DEPTH + 1
            )),
            "{err}"
        );
        assert_eq!(fs::read(dir.path().join(&ok)).unwrap(), b"ok");
    }
}

// Regression: PAX records were buffered whole (a 400 MB xattr took 895 MB).
#[test]
fn huge_pax_record_is_refused_before_it_is_read() {
    let (len, _) = pax_record("SCHILY.xattr.user.big", 300 << 20, b'v');
    for mode in MODES {
        let (_, record) = pax_record("SCHILY.xattr.user.big", 300 << 20, b'v');
        let layer = layer_with_extension(EntryType::XHeader, len, record);
        let err = unpack_bounded(layer, mode, Duration::from_secs(10))
            .expect_err("a 300 MB PAX header must be refused");
        let msg = err.to_string();
        assert!(matches!(err, LayerError::TooLarge { .. }), "{msg}");
        assert!(
            msg.contains(&format!("PAX extended header of {len} bytes"))
                && msg.contains("at byte 0")
                && msg.contains("limit of 1048576"),
            "{msg}"
        );
    }
    // A 100 MB `path` record, as in the finding.
    let (len, record) = pax_record("path", 100 << 20, b'a');
    let layer = layer_with_extension(EntryType::XHeader, len, record);
    let err = unpack_bounded(layer, WhiteoutMode::Apply, Duration::from_secs(10)).unwrap_err();
    assert!(err.to_string().contains("PAX extended header"), "{err}");
}

#[test]
fn huge_gnu_long_name_and_link_are_refused_before_they_are_read() {
    for (kind, what) in [
        (EntryType::GNULongName, "GNU long name"),
        (EntryType::GNULongLink, "GNU long link name"),
    ] {
        let len = 64 << 20;
        let layer = layer_with_extension(kind, len, io::repeat(b'a').take(len));
        let err = unpack_bounded(layer, WhiteoutMode::Oci, Duration::from_secs(10)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("{what} of {len} bytes")), "{msg}");
    }
}

#[test]
fn xattr_over_linux_limit_is_refused() {
    let (len, record) = pax_record("SCHILY.xattr.user.big", 100 * 1024, b'v');
    let layer = layer_with_extension(EntryType::XHeader, len, record);
    let err = unpack_bounded(layer, WhiteoutMode::Oci, Duration::from_secs(10)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"f\"") && msg.contains("102400-byte value") && msg.contains("65536"),
        "{msg}"
    );
}

#[test]
fn long_link_target_is_refused() {
    let target = "t/".repeat(2100);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "link", &target).unwrap();
    let tar = b.into_inner().unwrap();
    let err =
        unpack_bounded(tar.as_slice(), WhiteoutMode::Oci, Duration::from_secs(10)).unwrap_err();
    assert!(
        err.to_string().contains("\"link\"")
            && err.to_string().contains("link target is 4200 bytes"),
        "{err}"
    );
}

/// The guard follows the PAX `size` record that overrides an entry's ustar size: a
/// wrong framing would take file data for headers (missing the big record after it) or
/// refuse a valid archive.
#[test]
fn guard_follows_pax_size_overrides() {
    let data = vec![b'x'; 600];
    let small = |path: &str| {
        let (len, mut r) = pax_record("path", path.len() as u64, b'p');
        let mut rec = Vec::new();
        r.read_to_end(&mut rec).unwrap();
        let rec = String::from_utf8(rec)
            .unwrap()
            .replace(&"p".repeat(path.len()), path);
        (len, rec.into_bytes())
    };
    // A PAX header with `size=600` before a file whose ustar size says 0.
    let (size_len, size_rec) = {
        let (l, mut r) = pax_record("size", 3, b'0');
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        (
            l,
            String::from_utf8(v)
                .unwrap()
                .replace("=000", "=600")
                .into_bytes(),
        )
    };
    let build = |second: Box<dyn Read>| -> Box<dyn Read> {
        Box::new(
            io::Cursor::new(header_block("pax", EntryType::XHeader, size_len).to_vec())
                .chain(io::Cursor::new(size_rec.clone()))
                .chain(padding(size_len))
                .chain(io::Cursor::new(
                    header_block("big", EntryType::Regular, 0).to_vec(),
                ))
                .chain(io::Cursor::new(data.clone()))
                .chain(padding(600))
                .chain(second),
        )
    };
    // Then a 2 MiB PAX header: refused.
    let (len, record) = pax_record("path", 2 << 20, b'a');
    let second = io::Cursor::new(header_block("pax2", EntryType::XHeader, len).to_vec())
        .chain(record)
        .chain(padding(len))
        .chain(io::Cursor::new(raw_tar(&[raw_file("f", b"x")])));
    let err = unpack_bounded(
        build(Box::new(second)),
        WhiteoutMode::Oci,
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "PAX extended header of {len} bytes (header at byte 2560"
        )),
        "{err}"
    );
    // Then a small one: the whole archive unpacks.
    let (len, rec) = small("renamed");
    let second = io::Cursor::new(header_block("pax2", EntryType::XHeader, len).to_vec())
        .chain(io::Cursor::new(rec))
        .chain(padding(len))
        .chain(io::Cursor::new(raw_tar(&[raw_file("f", b"x")])));
    let dir = tempdir().unwrap();
    unpack_layer(
        build(Box::new(second)),
        dir.path(),
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(fs::read(dir.path().join("big")).unwrap(), data);
    assert_eq!(fs::read(dir.path().join("renamed")).unwrap(), b"x");
}
