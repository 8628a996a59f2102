//! Whiteout conventions: OCI (`.wh.` files in the tar) and overlayfs
//! (0/0 character devices and `*.overlay.opaque` xattrs on disk).

/// Prefix of an OCI whiteout file: `.wh.NAME` deletes `NAME` from lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// Name of the OCI opaque-directory marker: its directory hides every entry
/// of lower layers.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Prefix of AUFS metadata entries (`.wh..wh.plnk`, ...), of which only
/// [`OPAQUE_WHITEOUT`] has a meaning for OCI layers.
pub(super) const META_PREFIX: &[u8] = b".wh..wh.";

/// The overlayfs opaque xattr as set by a privileged mount.
pub(super) const TRUSTED_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The overlayfs opaque xattr as set by a `userxattr` (unprivileged) mount.
pub(super) const USER_OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Whether an xattr name belongs to overlayfs' private namespaces, which are
/// never written to layers nor taken from them.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}
