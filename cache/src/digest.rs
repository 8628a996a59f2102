//! Digests: kiln's one digest type and its one sha256, `kiln_oci`'s, re-exported here so
//! the store's API reads `kiln_cache::Digest` and `kiln_cache::sha256_of`.

pub use kiln_oci::Digest;
/// The sha256 digest of `bytes` (kiln's one sha256, under the store's name).
pub use kiln_oci::digest::sha256_digest as sha256_of;
