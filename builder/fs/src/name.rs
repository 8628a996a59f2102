//! File names in view paths.
//!
//! View paths are `/`-separated `String`s (`"usr/bin/sh"`): COPY sources, destinations,
//! glob and `.dockerignore` patterns are text. A name that is not valid UTF-8 is carried
//! in them by a reversible escape, never by a lossy conversion that would name another
//! file: each byte of an invalid sequence becomes NUL followed by the char of the same
//! value (U+0080..U+00FF). No real name contains NUL, so the mapping is one-to-one;
//! [`to_path`] gives back the exact bytes at every filesystem call, and a path that
//! missed it fails loudly there (a NUL in a path) instead of silently missing a file.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// The view-path form of a file name (or of a relative path read from the system).
pub fn encode(name: &OsStr) -> Cow<'_, str> {
    let bytes = name.as_bytes();
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(bytes.len() * 2);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for &b in chunk.invalid() {
            out.push('\0');
            out.push(char::from(b));
        }
    }
    Cow::Owned(out)
}

/// The exact path a view path stands for.
pub fn to_path(rel: &str) -> Cow<'_, Path> {
    if !rel.contains('\0') {
        return Cow::Borrowed(Path::new(rel));
    }
    let mut out = Vec::with_capacity(rel.len());
    let mut chars = rel.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\0', Some(b)) if (b as u32) <= 0xff => {
                out.push(b as u32 as u8);
                chars.next();
            }
            _ => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    Cow::Owned(OsString::from_vec(out).into())
}

/// The form patterns (globs, `.dockerignore`) are matched against: escaped bytes show
/// as U+FFFD, as in a lossy conversion.
pub fn for_matching(rel: &str) -> Cow<'_, str> {
    if !rel.contains('\0') {
        return Cow::Borrowed(rel);
    }
    let mut out = String::with_capacity(rel.len());
    let mut chars = rel.chars();
    while let Some(c) = chars.next() {
        if c == '\0' {
            chars.next();
            out.push(char::REPLACEMENT_CHARACTER);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_name_byte_exact() {
        for raw in [
            &b"plain"[..],
            b"caf\xe9",
            b"dir/caf\xe9/x\xff\xfe",
            "caf\u{e9}".as_bytes(),
            b"\xc3",
        ] {
            let name = OsStr::from_bytes(raw);
            let enc = encode(name);
            assert_eq!(to_path(&enc).as_os_str().as_bytes(), raw, "{enc:?}");
        }
        // Latin-1 é and UTF-8 é stay two different names.
        assert_ne!(
            encode(OsStr::from_bytes(b"caf\xe9")),
            encode(OsStr::from_bytes("caf\u{e9}".as_bytes()))
        );
        assert_eq!(
            for_matching(&encode(OsStr::from_bytes(b"caf\xe9"))),
            "caf\u{fffd}"
        );
    }
}
