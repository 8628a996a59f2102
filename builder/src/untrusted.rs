//! Reading OCI layouts kiln did not write (`FROM oci-layout://DIR`, an existing
//! `--output type=oci,dest=DIR`): such a directory may hold a symlink to `/dev/zero` or
//! to a file elsewhere on the host, a FIFO, or a blob longer than its descriptor says.
//!
//! So every file is opened below the layout directory with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` (no symlink at any component, no `..` out), must be a regular
//! file, and is read with a bound: small JSON files up to a cap, blobs exactly their
//! descriptor's size.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// Largest `index.json`, `oci-layout`, manifest or config read from a layout: 4 MiB, the
/// registries' limit.
pub const MAX_LAYOUT_JSON: u64 = 4 << 20;

/// An OCI layout directory opened for reading.
pub struct Layout {
    dir: OwnedFd,
    path: PathBuf,
}

impl Layout {
    /// Opens `path` (which may itself be reached through symlinks: the user named it).
    pub fn open(path: &Path) -> io::Result<Layout> {
        let dir = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot open {}: {e}", path.display()),
            )
        })?;
        Ok(Layout {
            dir,
            path: path.to_path_buf(),
        })
    }

    /// The directory as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file `rel` (e.g. `index.json`, `blobs/sha256/HEX`) of the
    /// layout; a symlink anywhere on the way, or anything but a regular file, is refused
    /// with an error naming the path. A missing file gives [`io::ErrorKind::NotFound`].
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        let full = self.path.join(rel);
        let fd =
            kiln_sandbox::beneath::open_beneath(&self.dir, rel, OFlags::RDONLY | OFlags::NOCTTY)
                .map_err(|e| match e {
                    rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} is or goes through a symbolic link, which an OCI layout kiln \
                     reads may not hold; refusing it",
                            full.display()
                        ),
                    ),
                    e => io::Error::new(
                        io::Error::from(e).kind(),
                        format!("cannot open {}: {e}", full.display()),
                    ),
                })?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a regular file (a device, FIFO or directory); refusing it",
                    full.display()
                ),
            ));
        }
        Ok(File::from(fd))
    }

    /// The whole of `rel`, refused if larger than `cap` bytes.
    pub fn read_capped(&self, rel: &str, cap: u64) -> io::Result<Vec<u8>> {
        let f = self.open_file(rel)?;
        let mut out = Vec::new();
        f.take(cap + 1).read_to_end(&mut out)?;
        if out.len() as u64 > cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is larger than {cap} bytes; refusing it",
                    self.path.join(rel).display()
                ),
            ));
        }
        Ok(out)
    }

    /// A reader of the blob `blobs/ALGO/HEX` that yields exactly `size` bytes, and fails
    /// (naming the blob) if the file is shorter or longer. The caller checks the digest.
    pub fn blob(&self, algorithm: &str, hex: &str, size: u64) -> io::Result<Exact<File>> {
        let rel = format!("blobs/{algorithm}/{hex}");
        let f = self.open_file(&rel)?;
        Ok(Exact {
            inner: f.take(size + 1),
            size,
            read: 0,
            path: self.path.join(rel),
        })
    }
}

/// A reader that must yield exactly `size` bytes (see [`Layout::blob`]).
pub struct Exact<R> {
    inner: io::Take<R>,
    size: u64,
    read: u64,
    path: PathBuf,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        let wrong = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is {what} than its descriptor's {} bytes; refusing it",
                    self.path.display(),
                    self.size
                ),
            )
        };
        if self.read > self.size {
            return Err(wrong("larger"));
        }
        if n == 0 && !buf.is_empty() && self.read < self.size {
            return Err(wrong("smaller"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    fn layout() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        let l = Layout::open(dir.path()).unwrap();
        (dir, l)
    }

    #[test]
    fn issue9_symlinks_devices_and_oversized_files_are_refused_quickly() {
        let start = Instant::now();
        let (dir, l) = layout();
        symlink("/dev/zero", dir.path().join("index.json")).unwrap();
        let e = l.read_capped("index.json", MAX_LAYOUT_JSON).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(e.to_string().contains("index.json"), "{e}");
        // A symlink inside the layout to a file outside it, and one on the way.
        let outside = tempfile::NamedTempFile::new().unwrap();
        symlink(outside.path(), dir.path().join("blobs/sha256/aa")).unwrap();
        assert!(l.blob("sha256", "aa", 0).is_err());
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("bb"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("blobs/x")).unwrap();
        symlink(other.path(), dir.path().join("blobs/x/link")).unwrap();
        let e = l.open_file("blobs/x/link/bb").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(l.open_file("../etc/passwd").is_err());
        // Not a regular file.
        let e = l.open_file("blobs").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // Too large.
        std::fs::write(dir.path().join("big.json"), vec![b' '; 5000]).unwrap();
        let e = l.read_capped("big.json", 4096).unwrap_err();
        assert!(e.to_string().contains("larger than 4096 bytes"), "{e}");
        assert_eq!(l.read_capped("big.json", 5000).unwrap().len(), 5000);
        assert_eq!(
            l.open_file("missing").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn issue9_blobs_must_match_their_descriptor_size() {
        let (dir, l) = layout();
        std::fs::write(dir.path().join("blobs/sha256/cc"), b"0123456789").unwrap();
        let read = |size| -> io::Result<Vec<u8>> {
            let mut out = Vec::new();
            l.blob("sha256", "cc", size)?.read_to_end(&mut out)?;
            Ok(out)
        };
        assert_eq!(read(10).unwrap(), b"0123456789");
        let e = read(4).unwrap_err().to_string();
        assert!(e.contains("larger than its descriptor's 4 bytes"), "{e}");
        let e = read(11).unwrap_err().to_string();
        assert!(e.contains("smaller than its descriptor's 11 bytes"), "{e}");
    }
}
