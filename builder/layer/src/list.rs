//! Listing a layer blob's entries without unpacking it: what a file op needs to see a
//! layer made by file ops (which only add and replace) as a tree, when no snapshot of
//! it is on disk. The files' bytes stay in the blob, found by their offsets in its
//! decompressed stream.

use std::collections::HashMap;
use std::io::Read;

use kiln_oci::Digest;
use tar::EntryType;

use super::error::LayerError;
use super::safe_fs::{normalize, split_last};
use super::unpack::{finish_layer_tar, malformed, open_layer_tar};
use super::whiteout::WHITEOUT_PREFIX;

/// One entry of a listed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    /// Its path: plain components joined by `/`, without a trailing `/`.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: ListedKind,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// What a [`ListedEntry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListedKind {
    /// A directory.
    Dir,
    /// A regular file: `len` bytes at `offset` of the blob's decompressed stream.
    File {
        /// Where its bytes start.
        offset: u64,
        /// How many.
        len: u64,
    },
    /// A second path of the regular file listed earlier at this path.
    Hardlink(Vec<u8>),
    /// A symlink to this target.
    Symlink(Vec<u8>),
}

/// Lists the entries of the layer `blob` (gzip, zstd or plain) in its order, checking
/// its diff_id against `expected` when given. `Ok(None)` when the layer holds what a
/// list of added entries cannot stand for: whiteouts and opaque markers, devices and
/// fifos, extended attributes, an entry whose parent directory is not listed before it,
/// a hardlink to anything but a regular file listed before it, a name that is not a
/// plain relative path.
pub fn list_layer(
    blob: impl Read,
    expected: Option<&Digest>,
) -> Result<Option<Vec<ListedEntry>>, LayerError> {
    let mut archive = open_layer_tar(blob)?;
    let mut out = Vec::new();
    // Directories and regular files listed so far (true: a directory).
    let mut seen: HashMap<Vec<u8>, bool> = HashMap::new();
    let mut representable = true;
    for entry in archive
        .entries()
        .map_err(malformed("cannot read the tar stream"))?
    {
        let mut entry = entry.map_err(malformed("cannot read a tar header"))?;
        if !representable {
            continue;
        }
        match list_entry(&mut entry, &seen) {
            Ok(Some(e)) => {
                match e.kind {
                    ListedKind::Dir => seen.insert(e.path.clone(), true),
                    ListedKind::File { .. } | ListedKind::Hardlink(_) => {
                        seen.insert(e.path.clone(), false)
                    }
                    ListedKind::Symlink(_) => seen.remove(&e.path).map(|_| false),
                };
                out.push(e);
            }
            // A global header has no entry of its own.
            Ok(None) => {}
            Err(()) => representable = false,
        }
    }
    finish_layer_tar(archive, expected)?;
    Ok(representable.then_some(out))
}

/// One entry as listed; `Err(())` when it cannot be (see [`list_layer`]).
fn list_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    seen: &HashMap<Vec<u8>, bool>,
) -> Result<Option<ListedEntry>, ()> {
    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions() {
        return Ok(None);
    }
    // Long names and big sizes are read through; anything else a PAX header says
    // (xattrs, big ids, sub-second times) the list does not keep.
    if let Some(pax) = entry.pax_extensions().map_err(|_| ())? {
        for ext in pax {
            if !matches!(
                ext.map_err(|_| ())?.key_bytes(),
                b"path" | b"linkpath" | b"size"
            ) {
                return Err(());
            }
        }
    }
    let path = normalize(&entry.path_bytes()).map_err(|_| ())?;
    let (parent, base) = split_last(&path);
    if path.is_empty() || base.starts_with(WHITEOUT_PREFIX.as_bytes()) {
        return Err(());
    }
    if !parent.is_empty() && seen.get(parent) != Some(&true) {
        return Err(());
    }
    let h = entry.header();
    let link = || -> Result<Vec<u8>, ()> { Ok(entry.link_name_bytes().ok_or(())?.into_owned()) };
    let kind = match kind {
        EntryType::Directory => ListedKind::Dir,
        EntryType::Regular | EntryType::Continuous => ListedKind::File {
            offset: entry.raw_file_position(),
            len: entry.size(),
        },
        EntryType::Symlink => ListedKind::Symlink(link()?),
        EntryType::Link => {
            let target = normalize(&link()?).map_err(|_| ())?;
            if seen.get(&target) != Some(&false) {
                return Err(());
            }
            ListedKind::Hardlink(target)
        }
        _ => return Err(()),
    };
    Ok(Some(ListedEntry {
        path,
        kind,
        mode: h.mode().map_err(|_| ())? & 0o7777,
        uid: h.uid().ok().and_then(|u| u32::try_from(u).ok()).ok_or(())?,
        gid: h.gid().ok().and_then(|g| u32::try_from(g).ok()).ok_or(())?,
        mtime: h
            .mtime()
            .ok()
            .and_then(|t| i64::try_from(t).ok())
            .ok_or(())?,
    }))
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::PathBuf;

    use super::*;
    use crate::{
        Compression, EntryKind, LayerEntry, LayerOptions, write_layer, write_layer_entries,
    };

    fn entry(path: &str, kind: EntryKind) -> LayerEntry {
        LayerEntry {
            path: PathBuf::from(path),
            kind,
            mode: 0o640,
            uid: 3,
            gid: 4,
            mtime: 1_600_000_000,
            xattrs_from: None,
        }
    }

    #[test]
    fn a_layer_of_added_entries_lists_with_the_offsets_of_its_bytes() {
        let t = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(t.path().join("big"), &big).unwrap();
        let file = |link| EntryKind::File {
            from: t.path().join("big"),
            len: big.len() as u64,
            link,
        };
        let entries = vec![
            entry("d", EntryKind::Dir),
            entry("d/big", file(Some((1, 2)))),
            entry("d/again", file(Some((1, 2)))),
            entry("d/small", EntryKind::Data(b"hi".to_vec())),
            entry("d/sym", EntryKind::Symlink("small".into())),
        ];
        for compression in [Compression::default(), Compression::Uncompressed] {
            let opts = LayerOptions {
                compression,
                ..Default::default()
            };
            let mut blob = Vec::new();
            let info = write_layer_entries(entries.clone(), &opts, &mut blob).unwrap();
            let list = list_layer(blob.as_slice(), Some(&info.diff_id))
                .unwrap()
                .unwrap();
            let names: Vec<_> = list.iter().map(|e| e.path.as_slice()).collect();
            assert_eq!(
                names,
                [&b"d"[..], b"d/again", b"d/big", b"d/small", b"d/sym"]
            );
            assert_eq!(list[2].kind, ListedKind::Hardlink(b"d/again".to_vec()));
            assert_eq!(list[4].kind, ListedKind::Symlink(b"small".to_vec()));
            assert_eq!(
                (list[1].mode, list[1].uid, list[1].mtime),
                (0o640, 3, 1_600_000_000)
            );
            let ListedKind::File { offset, len } = list[3].kind else {
                panic!("{:?}", list[3]);
            };
            let mut tar = Vec::new();
            crate::compression::detect(blob.as_slice())
                .unwrap()
                .1
                .read_to_end(&mut tar)
                .unwrap();
            assert_eq!(&tar[offset as usize..(offset + len) as usize], b"hi");
            // A wrong diff_id is an error, not a listing.
            let other = kiln_oci::digest::sha256_digest(b"another layer");
            assert!(matches!(
                list_layer(blob.as_slice(), Some(&other)),
                Err(LayerError::DiffIdMismatch { .. })
            ));
        }
    }

    #[test]
    fn a_layer_with_a_whiteout_is_not_listed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/.wh.gone"), b"").unwrap();
        let mut blob = Vec::new();
        write_layer(t.path(), &LayerOptions::default(), &mut blob).unwrap();
        assert_eq!(list_layer(blob.as_slice(), None).unwrap(), None);
    }
}
