//! Layers of registry images, fetched when a step needs their bytes.
//!
//! Resolving a `FROM` stores only the manifest and the config; the image op's result
//! lists the layers without their blobs (BuildKit's lazy refs). A step that reads a
//! filesystem (a RUN, a COPY from a stage or onto a base) fetches the blobs of the
//! layers it has no snapshot of, several at once and alongside the other running
//! vertices, reporting them as blob events of its own vertex. A build whose steps are
//! all cache hits, with its output in the store, downloads no layer.

use kiln_ops::VertexId;

use super::{BuildWorker, Output, Result};
use crate::snapshots::LayerRef;

impl BuildWorker<'_> {
    /// Fetches the missing blobs of the layers of `inputs` that are not unpacked yet.
    pub(super) fn fetch_input_layers(&self, id: VertexId, inputs: &[Output]) -> Result<()> {
        let need: Vec<&LayerRef> = inputs
            .iter()
            .flat_map(|o| o.layers())
            .filter(|l| !self.snapshots.path(&l.diff_id).is_dir())
            .collect();
        Ok(self.images.ensure_layers(need, Some(id))?)
    }

    /// Whether every layer of a cached result is present or can be fetched: a record
    /// over a resolved base whose layers were never fetched is still a hit.
    pub(super) fn layers_available(&self, output: &Output) -> Result<bool> {
        for l in output.layers() {
            if !self.images.layer_available(l)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
