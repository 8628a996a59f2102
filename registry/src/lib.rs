//! kiln registry.
