//! A guard in front of the `tar` crate's reader.
//!
//! The crate reads a PAX extended header, a GNU long name and a GNU long link whole into
//! memory, whatever size their header declares: a 1 MB layer could make kiln allocate
//! gigabytes. [`TarGuard`] follows the archive's framing exactly as the crate reads it
//! (header blocks, data rounded to 512 bytes, the PAX `size` record that overrides the
//! next entry's size, GNU sparse extension blocks, the end-of-archive block) and fails the
//! read that completes the header of such a record if it declares more than
//! [`MAX_EXTENSION_SIZE`] bytes, before the crate allocates anything for it.

use std::fmt;
use std::io::{self, Read};

/// Largest PAX extended header, GNU long name or GNU long link accepted, in bytes.
pub(super) const MAX_EXTENSION_SIZE: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// The error [`TarGuard`] fails a read with (inside an `io::Error`).
#[derive(Debug, Clone)]
pub(super) struct ExtensionTooLarge {
    /// The record header's own name field (e.g. `././@LongLink`, `PaxHeaders/x`).
    pub(super) name: String,
    /// What the record is.
    pub(super) what: &'static str,
    /// Its declared size.
    pub(super) size: u64,
    /// Offset of its header in the uncompressed layer.
    pub(super) offset: u64,
}

impl fmt::Display for ExtensionTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} bytes (header at byte {} of the uncompressed layer) is over kiln's limit of {} bytes",
            self.what, self.size, self.offset, MAX_EXTENSION_SIZE
        )
    }
}

impl std::error::Error for ExtensionTooLarge {}

/// Where the guard is in the archive.
#[derive(Debug)]
enum State {
    /// Reading a header block; `filled` bytes of it so far.
    Header { filled: usize },
    /// Reading a GNU sparse extension block, then `data` bytes of entry data.
    SparseExt { filled: usize, data: u64 },
    /// Keeping the data of a PAX extended header (`left` bytes to go), then `pad` bytes.
    Pax { left: u64, pad: u64 },
    /// Passing `left` bytes of data through, then a header.
    Skip { left: u64 },
    /// Past the end-of-archive block, or past a header the crate will reject itself.
    Done,
}

/// A reader that refuses oversized tar extension records (see the module docs).
pub(super) struct TarGuard<R> {
    inner: R,
    pos: u64,
    state: State,
    block: [u8; BLOCK as usize],
    header_at: u64,
    /// The data of the PAX extended header waiting for its entry.
    pax: Option<Vec<u8>>,
    pax_buf: Vec<u8>,
    failed: Option<ExtensionTooLarge>,
}

impl<R: Read> TarGuard<R> {
    pub(super) fn new(inner: R) -> Self {
        TarGuard {
            inner,
            pos: 0,
            state: State::Header { filled: 0 },
            block: [0; BLOCK as usize],
            header_at: 0,
            pax: None,
            pax_buf: Vec::new(),
            failed: None,
        }
    }

    pub(super) fn into_inner(self) -> R {
        self.inner
    }

    /// Follows the framing over `bytes`, which the crate is about to get.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ExtensionTooLarge> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Header { filled } => {
                    if *filled == 0 {
                        self.header_at = self.pos;
                    }
                    let n = (BLOCK as usize - *filled).min(bytes.len());
                    self.block[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                    *filled += n;
                    let full = *filled == BLOCK as usize;
                    self.advance(n, &mut bytes);
                    if full {
                        self.on_header()?;
                    }
                }
                State::SparseExt { filled, data } => {
                    let data = *data;
                    let n = (BLOCK as usize - *filled).min(bytes.len());
                    self.block[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                    *filled += n;
                    let full = *filled == BLOCK as usize;
                    self.advance(n, &mut bytes);
                    if full {
                        // `isextended` of a GNU extension sparse header (after 21 entries).
                        self.state = if self.block[504] == 1 {
                            State::SparseExt { filled: 0, data }
                        } else {
                            skip(data)
                        };
                    }
                }
                State::Pax { left, pad } => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    self.pax_buf.extend_from_slice(&bytes[..n]);
                    *left -= n as u64;
                    if *left == 0 {
                        let pad = *pad;
                        self.pax = Some(std::mem::take(&mut self.pax_buf));
                        self.state = skip(pad);
                    }
                    self.advance(n, &mut bytes);
                }
                State::Skip { left } => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Header { filled: 0 };
                    }
                    self.advance(n, &mut bytes);
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, n: usize, bytes: &mut &[u8]) {
        self.pos += n as u64;
        *bytes = &bytes[n..];
    }

    /// A header block is complete: decide what follows it, as the crate will.
    fn on_header(&mut self) -> Result<(), ExtensionTooLarge> {
        // The crate stops at the first zero block (it does not ignore zeros).
        if self.block.iter().all(|b| *b == 0) {
            self.state = State::Done;
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&self.block);
        let sum = self.block[..148]
            .iter()
            .chain(&self.block[156..])
            .fold(0u32, |a, b| a + u32::from(*b))
            + 8 * 32;
        // The crate rejects what we cannot frame: nothing more to guard.
        let (Ok(cksum), Ok(mut size)) = (header.cksum(), header.entry_size()) else {
            self.state = State::Done;
            return Ok(());
        };
        if cksum != sum {
            self.state = State::Done;
            return Ok(());
        }
        let et = header.entry_type();
        let is_extension = et.is_gnu_longname()
            || et.is_gnu_longlink()
            || et.is_pax_local_extensions()
            || et.is_pax_global_extensions();
        if !is_extension {
            if let Some(s) = self.pax.as_deref().and_then(pax_size) {
                size = s;
            }
        }
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let what = if !recognized {
            None
        } else if et.is_pax_local_extensions() {
            Some("PAX extended header")
        } else if et.is_gnu_longname() {
            Some("GNU long name")
        } else if et.is_gnu_longlink() {
            Some("GNU long link name")
        } else {
            None
        };
        if let Some(what) = what {
            if size > MAX_EXTENSION_SIZE {
                let err = ExtensionTooLarge {
                    name: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
                    what,
                    size,
                    offset: self.header_at,
                };
                self.failed = Some(err.clone());
                return Err(err);
            }
        }
        let Some(padded) = size.checked_add(BLOCK - 1).map(|s| s & !(BLOCK - 1)) else {
            self.state = State::Done;
            return Ok(());
        };
        self.state = if what.is_some() && et.is_pax_local_extensions() {
            if self.pax.is_some() {
                // Two PAX headers for one entry: the crate refuses the archive.
                State::Done
            } else if size == 0 {
                self.pax = Some(Vec::new());
                skip(padded)
            } else {
                self.pax_buf.clear();
                State::Pax {
                    left: size,
                    pad: padded - size,
                }
            }
        } else if what.is_some() {
            skip(padded)
        } else {
            // An entry the crate hands out: the pending PAX header was its own.
            self.pax = None;
            match header.as_gnu() {
                Some(gnu) if et.is_gnu_sparse() && gnu.is_extended() => State::SparseExt {
                    filled: 0,
                    data: padded,
                },
                None if et.is_gnu_sparse() => State::Done,
                _ => skip(padded),
            }
        };
        Ok(())
    }
}

fn skip(left: u64) -> State {
    if left == 0 {
        State::Header { filled: 0 }
    } else {
        State::Skip { left }
    }
}

/// The PAX `size` record as the `tar` crate reads it (its `pax_extensions_value`): the
/// first `size` key, `None` if any record before it or its value is malformed.
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.clone()));
        }
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(n)
    }
}
