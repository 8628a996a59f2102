//! kiln cache.
