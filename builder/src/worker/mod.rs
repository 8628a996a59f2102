//! The worker: executes build-graph ops against the store for the solver.
//!
//! Results are chains of layers. A file op writes its changes into an empty directory,
//! which is written out as a layer blob and then becomes that layer's snapshot as it is,
//! so nothing is unpacked twice. Cache records map a cache key to the resulting chain.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use kiln_cache::{CacheError, Digest, StatMemo, Store};
use kiln_fs::{
    ContextFs, CopyOptions, Entry, LayeredFs, SourceFs, Upper, apply_chmod, resolve_chown,
};
use kiln_layer::LayerOptions;
use kiln_ops::{FileAction, Op, Platform, Vertex, VertexId};
use kiln_sandbox::{Runtime, SnapshotterKind};
use serde::{Deserialize, Serialize};

use crate::cachekey::{self, KeyError, KeySource};
use crate::download::{DownloadError, Downloads};
use crate::images::{ImageStore, ImageStoreError};
use crate::snapshots::{LayerRef, SnapshotError, Snapshots, is_empty_dir};
use kiln_solver::{Reporter, Worker};

pub use exec::ExecError;

/// Why a build op failed (what the solver reports for its vertex).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A RUN step failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A file op refers to an input the vertex does not have.
    #[error("file op refers to a missing input")]
    MissingInput,
    /// The cache record could not be written.
    #[error("writing the cache record")]
    CacheRecord(#[source] CacheError),
    /// The cache key could not be formed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A base image could not be resolved or its layers fetched.
    #[error(transparent)]
    Image(#[from] Box<ImageStoreError>),
    /// An `ADD <url>` failed.
    #[error(transparent)]
    Download(#[from] Box<DownloadError>),
    /// A snapshot could not be made.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Copying files (COPY, ADD, WORKDIR, heredocs) failed.
    #[error(transparent)]
    Fs(#[from] kiln_fs::FsError),
    /// Writing a layer failed.
    #[error(transparent)]
    Layer(#[from] kiln_layer::LayerError),
    /// The sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] kiln_sandbox::SandboxError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] CacheError),
    /// A git source could not be fetched or checked out.
    #[error(transparent)]
    Git(#[from] Box<crate::git::GitError>),
    /// A named context the build graph reads was not given to the worker.
    #[error("named context {0:?} was not given (--build-context {0}=DIR)")]
    NoNamedContext(String),
    /// A `--cache-from` cache could not give a result it has a record of.
    #[error(transparent)]
    RemoteCache(#[from] Box<crate::remote_cache::RemoteCacheError>),
    /// A layer written again from its snapshot did not give the blob it was written as.
    #[error(
        "layer {expected} written again from its snapshot came out as {actual}: the snapshot or kiln's layer writer changed since it was built"
    )]
    Rewritten {
        /// The blob the image names.
        expected: Digest,
        /// What the writer gave.
        actual: Digest,
    },
    /// An I/O error without more to say than itself.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<ImageStoreError> for WorkerError {
    fn from(e: ImageStoreError) -> WorkerError {
        WorkerError::Image(Box::new(e))
    }
}

impl From<DownloadError> for WorkerError {
    fn from(e: DownloadError) -> WorkerError {
        WorkerError::Download(Box::new(e))
    }
}

type Result<T, E = WorkerError> = std::result::Result<T, E>;

/// The result of a vertex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// A filesystem as a chain of layers, bottom first (empty: scratch).
    Fs {
        /// The layers.
        layers: Vec<LayerRef>,
        /// Whether this vertex added the last layer (false: its diff was empty).
        added: bool,
    },
    /// A local context: the build context ([`MAIN_CONTEXT`]) or a named one.
    Context(String),
}

/// The name of the build context in [`kiln_ops::Op::Context`] (named contexts have
/// their own names).
pub const MAIN_CONTEXT: &str = "context";

impl Output {
    /// The layers of a filesystem output.
    pub fn layers(&self) -> &[LayerRef] {
        match self {
            Output::Fs { layers, .. } => layers,
            Output::Context(_) => &[],
        }
    }
}

/// Executes ops for one build.
pub struct BuildWorker<'a> {
    store: &'a Store,
    snapshots: Snapshots,
    context: ContextFs,
    memo: StatMemo,
    /// Named local contexts (`--build-context NAME=DIR`) and their stat memos.
    named: HashMap<String, (ContextFs, StatMemo)>,
    /// Git references resolved for cache keys, by remote and reference: the checkout
    /// takes the very commit the key named.
    git_commits: std::sync::Mutex<HashMap<(String, Option<String>), crate::git::Resolved>>,
    /// `--network-timeout` (also for git's HTTP transfers).
    network_timeouts: Option<kiln_registry::net::Timeouts>,
    images: &'a ImageStore,
    layer_opts: LayerOptions,
    downloads: Downloads,
    /// How RUN steps run.
    pub(crate) exec: ExecSettings,
    reporter: Option<&'a dyn Reporter>,
    /// Keeps the build record and explains misses.
    recorder: Option<&'a crate::explain::Recorder>,
    /// Vertices no other vertex reads: their layers' snapshots are not kept (the blob
    /// is), which spares writing the tree to disk a second time; a later build that
    /// needs one unpacks it from the blob.
    lazy: std::collections::HashSet<VertexId>,
    /// File ops read only by later file ops of this build (see [`streamed_chain`]): they
    /// are written from their sources like those in `lazy`, with no snapshot, and their
    /// entries are kept (by diff_id) for the views of the ops that read them.
    streamed: std::collections::HashSet<VertexId>,
    /// The vertices whose layers the built image can hold (see [`image_chain`]); `None`
    /// for all. The layers of the others (a builder stage's, read only through
    /// `COPY --from` or a mount) are not compressed: see [`BuildWorker::commit_layer`].
    image_chain: Option<std::collections::HashSet<VertexId>>,
    /// The entries of the layers the ops in `streamed` wrote, by diff_id.
    kept: std::sync::Mutex<HashMap<Digest, std::sync::Arc<kiln_fs::Entries>>>,
    /// Diff directories being deleted in the background.
    trash: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The build's lease: every cache record it hits and every layer it uses is added
    /// before use, so a concurrent `kiln prune` leaves them.
    lease: Option<&'a kiln_cache::Lease>,
    /// The `--cache-from` caches, looked in when the store has no record of a key.
    imported: Option<&'a crate::remote_cache::Imported>,
}

/// What RUN steps need beyond the store.
pub struct ExecSettings {
    /// The snapshotter.
    pub snapshotter: SnapshotterKind,
    /// The runtime.
    pub runtime: Box<dyn Runtime>,
    /// `--secret` ids and their files.
    pub secrets: HashMap<String, std::path::PathBuf>,
    /// `--allow security.insecure`: `RUN --security=insecure` runs privileged.
    pub allow_insecure: bool,
    /// `--ssh`: agent sockets by id, for `RUN --mount=type=ssh` (and `default` for
    /// `ADD git@...`).
    pub ssh: HashMap<String, std::path::PathBuf>,
}

impl<'a> BuildWorker<'a> {
    /// A worker over `store` for a build of `context`.
    pub fn new(
        store: &'a Store,
        context: ContextFs,
        images: &'a ImageStore,
        mut layer_opts: LayerOptions,
        exec: ExecSettings,
    ) -> Result<Self> {
        let memo = StatMemo::load(store, context.root())?;
        if layer_opts.chunk_cache.is_none() {
            layer_opts.chunk_cache = Some(std::sync::Arc::new(chunks::StoreChunks::new(store)));
        }
        Ok(BuildWorker {
            store,
            snapshots: Snapshots::new(store),
            context,
            memo,
            named: HashMap::new(),
            git_commits: Default::default(),
            network_timeouts: None,
            images,
            layer_opts,
            downloads: Downloads::new(store.tmp_dir())?,
            exec,
            reporter: None,
            recorder: None,
            lazy: Default::default(),
            streamed: Default::default(),
            image_chain: None,
            kept: Default::default(),
            trash: Default::default(),
            lease: None,
            imported: None,
        })
    }

    /// Adds named local contexts (`--build-context NAME=DIR`), each with its own stat
    /// memo, so an unchanged file costs one stat there too.
    pub fn with_named_contexts(
        mut self,
        contexts: impl IntoIterator<Item = (String, ContextFs)>,
    ) -> Result<Self> {
        for (name, fs) in contexts {
            let memo = StatMemo::load(self.store, fs.root())?;
            self.named.insert(name, (fs, memo));
        }
        Ok(self)
    }

    /// The local context `name` and its stat memo.
    fn context_fs(&self, name: &str) -> Result<(&ContextFs, &StatMemo)> {
        if name == MAIN_CONTEXT {
            return Ok((&self.context, &self.memo));
        }
        self.named
            .get(name)
            .map(|(fs, memo)| (fs, memo))
            .ok_or_else(|| WorkerError::NoNamedContext(name.to_string()))
    }

    /// Vertices whose results no later vertex of this build reads.
    pub fn with_lazy_snapshots(mut self, vertices: impl IntoIterator<Item = VertexId>) -> Self {
        self.lazy = vertices.into_iter().collect();
        self
    }

    /// File ops whose results only later file ops read (see [`streamed_chain`]).
    pub fn with_streamed_chain(mut self, vertices: impl IntoIterator<Item = VertexId>) -> Self {
        self.streamed = vertices.into_iter().collect();
        self
    }

    /// The vertices whose layers the built image can hold (see [`image_chain`]): only
    /// theirs are compressed as they are made; `None`, all are.
    pub fn with_image_chain(
        mut self,
        vertices: Option<std::collections::HashSet<VertexId>>,
    ) -> Self {
        self.image_chain = vertices;
        self
    }

    /// Uses `timeouts` (`--network-timeout`) for `ADD <url>` downloads.
    pub fn with_network_timeouts(mut self, timeouts: kiln_registry::net::Timeouts) -> Self {
        self.downloads.set_timeouts(timeouts);
        self.network_timeouts = Some(timeouts);
        self
    }

    /// Adds what the build uses to `lease` (see [`kiln_cache::Lease`]).
    pub fn with_lease(mut self, lease: &'a kiln_cache::Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Looks keys the store has no record of up in `imported` (`--cache-from`).
    pub fn with_imported(mut self, imported: &'a crate::remote_cache::Imported) -> Self {
        self.imported = Some(imported);
        self
    }

    /// A key found in a `--cache-from` cache: its layers are made known to the store
    /// (a registry's fetched only when their bytes are needed), the record is saved in
    /// the store (the next build hits there), and the hit is recorded as the cache's.
    fn load_imported(&self, key: &Digest) -> Result<Option<Output>> {
        let Some((cache, entry)) = self.imported.and_then(|i| i.lookup(key.as_str())) else {
            return Ok(None);
        };
        cache.materialize(self.store, entry).map_err(Box::new)?;
        let output = Output::Fs {
            layers: entry.layers.iter().map(|l| l.layer_ref()).collect(),
            added: entry.added,
        };
        self.lease_layers(output.layers(), &[key.as_str()])?;
        if !self.layers_available(&output)? {
            return Ok(None);
        }
        self.store
            .cache_put_as(
                key.as_str(),
                &Record {
                    output: output.clone(),
                    description: entry.description.clone(),
                    build: entry.build.clone(),
                },
            )
            .map_err(WorkerError::CacheRecord)?;
        if let Some(r) = self.recorder {
            r.found_remote(key, &cache.name);
        }
        Ok(Some(output))
    }

    /// Adds `layers` (their blobs and snapshots) and `extra` to the build's lease.
    fn lease_layers(&self, layers: &[LayerRef], extra: &[&str]) -> Result<()> {
        if let Some(lease) = self.lease {
            let refs = layers
                .iter()
                .flat_map(|l| [l.digest.to_string(), l.diff_id.to_string()])
                .chain(extra.iter().map(|s| s.to_string()));
            lease.add(refs)?;
        }
        Ok(())
    }

    /// Sends RUN output to `reporter`.
    pub fn with_reporter(mut self, reporter: &'a dyn Reporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Captures each step's key inputs into `recorder` and tells it of hits and misses.
    pub fn with_recorder(mut self, recorder: &'a crate::explain::Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Saves the stat memo (call once the build is done).
    pub fn finish(&self) -> Result<()> {
        for t in self.trash.lock().expect("trash lock").drain(..) {
            let _ = t.join();
        }
        self.memo.save()?;
        for (_, memo) in self.named.values() {
            memo.save()?;
        }
        Ok(())
    }

    /// A view of a filesystem output: the top layers this build wrote from memory are
    /// their kept entries, the others their snapshots (unpacked from the blob if need be).
    fn view(&self, out: &Output, name: &str) -> Result<LayeredFs> {
        self.view_of(out, name, false)
    }

    /// [`BuildWorker::view`]; with `listed`, the top layers that have no snapshot are
    /// listed from their blobs instead of unpacked (see [`BuildWorker::listed`]), as
    /// long as they can be: for the output of an op of [`streamed_chain`], which only
    /// file ops read, no step of this build needs their snapshots.
    fn view_of(&self, out: &Output, name: &str, listed: bool) -> Result<LayeredFs> {
        let layers = out.layers();
        let mut mem = Vec::new();
        for l in layers.iter().rev() {
            let kept = self
                .kept
                .lock()
                .expect("kept lock")
                .get(&l.diff_id)
                .cloned();
            match kept {
                Some(e) => mem.push(e),
                None if listed && !self.snapshots.path(&l.diff_id).is_dir() => {
                    match self.listed(l)? {
                        Some(e) => mem.push(e),
                        None => break,
                    }
                }
                None => break,
            }
        }
        let on_disk = &layers[..layers.len() - mem.len()];
        let mut view = LayeredFs::new(self.snapshots.chain(self.store, on_disk)?, name);
        for e in mem.into_iter().rev() {
            view.push_entries(e);
        }
        Ok(view)
    }

    /// The entries of layer `l` listed from its blob (and kept, for the views of later
    /// ops), its files' bytes read from the blob when they are needed; `None` when the
    /// layer holds what a list of added entries cannot stand for (whiteouts, devices,
    /// xattrs: a layer a RUN made), which is then unpacked.
    fn listed(&self, l: &LayerRef) -> Result<Option<std::sync::Arc<kiln_fs::Entries>>> {
        // Its files are read from the blob by path later: a spliced blob is written out.
        let path = self.store.blob_file(&l.digest)?;
        let blob = std::fs::File::open(&path).map_err(|source| kiln_layer::LayerError::Io {
            op: "open layer blob",
            path: path.clone(),
            source,
        })?;
        let Some(list) = kiln_layer::list_layer(std::io::BufReader::new(blob), Some(&l.diff_id))?
        else {
            return Ok(None);
        };
        let entries = std::sync::Arc::new(listed_entries(list, &path));
        self.kept
            .lock()
            .expect("kept lock")
            .insert(l.diff_id.clone(), entries.clone());
        Ok(Some(entries))
    }

    /// Runs a file op into a new layer. `input_ids` are the vertices of `inputs`.
    fn file_op(
        &self,
        id: VertexId,
        f: &kiln_ops::FileOp,
        inputs: &[Output],
        input_ids: &[VertexId],
    ) -> Result<Output> {
        // The output of an op only file ops read can be seen through its blobs.
        let listed = |i: usize| input_ids.get(i).is_some_and(|v| self.streamed.contains(v));
        let base_out = if f.has_base {
            inputs.first().cloned()
        } else {
            None
        };
        let base_view = match &base_out {
            Some(o) => self.view_of(o, "the base image", listed(0))?,
            None => LayeredFs::default(),
        };
        let sources: Vec<Box<dyn SourceFs + '_>> = inputs
            .iter()
            .enumerate()
            .skip(usize::from(f.has_base))
            .map(|(i, o)| -> Result<Box<dyn SourceFs + '_>> {
                Ok(match o {
                    Output::Context(name) => Box::new(ContextRef(self.context_fs(name)?.0)),
                    fs_out => {
                        Box::new(self.view_of(fs_out, "the source stage or image", listed(i))?)
                    }
                })
            })
            .collect::<Result<_>>()?;
        let owner_of = |chown: &Option<kiln_ops::Chown>| {
            chown
                .as_ref()
                .map(|c| resolve_chown(c, &base_view))
                .transpose()
        };
        let mut layers = base_out.map(|o| o.layers().to_vec()).unwrap_or_default();
        let streamed = self.streamed.contains(&id);
        if streamed || self.lazy.contains(&id) {
            // No later step reads the result as a filesystem (or only later file ops do,
            // through the entries kept here): the layer is written from the sources,
            // with no tree on disk. An archive's members are read from the archive; what
            // only a directory gives exactly (see `Upper::in_memory`) is done on one.
            let mut upper = Upper::in_memory(&base_view);
            match self.apply_actions(f, &sources, &mut upper, &owner_of) {
                Err(WorkerError::Fs(kiln_fs::FsError::NeedsDisk)) => {}
                Err(e) => return Err(e),
                Ok(()) => {
                    let entries = upper.finish_entries()?.unwrap_or_default();
                    if f.has_base && entries.is_empty() {
                        return Ok(Output::Fs {
                            layers,
                            added: false,
                        });
                    }
                    let entries = std::sync::Arc::new(entries);
                    let layer = self.commit_entries(&entries)?;
                    if streamed {
                        let mut entries = std::sync::Arc::unwrap_or_clone(entries);
                        layer_links(&mut entries);
                        self.kept
                            .lock()
                            .expect("kept lock")
                            .insert(layer.diff_id.clone(), std::sync::Arc::new(entries));
                    }
                    layers.push(layer);
                    return Ok(Output::Fs {
                        layers,
                        added: true,
                    });
                }
            }
        }
        let upper_dir = self.snapshots.temp_dir("layer")?;
        let mut upper = Upper::new(upper_dir.path(), &base_view);
        self.apply_actions(f, &sources, &mut upper, &owner_of)?;
        upper.finish()?;
        if f.has_base && is_empty_dir(upper_dir.path()) {
            return Ok(Output::Fs {
                layers,
                added: false,
            });
        }
        let layer = self.commit_layer(id, upper_dir)?;
        layers.push(layer);
        Ok(Output::Fs {
            layers,
            added: true,
        })
    }

    /// Applies a file op's actions to `upper`.
    fn apply_actions(
        &self,
        f: &kiln_ops::FileOp,
        sources: &[Box<dyn SourceFs + '_>],
        upper: &mut Upper<'_>,
        owner_of: &dyn Fn(&Option<kiln_ops::Chown>) -> kiln_fs::Result<Option<kiln_fs::Ids>>,
    ) -> Result<()> {
        for action in &f.actions {
            match action {
                FileAction::Copy {
                    input,
                    src,
                    dest,
                    chown,
                    chmod,
                    unpack,
                    parents,
                    exclude,
                } => {
                    let source = sources
                        .get(*input - usize::from(f.has_base))
                        .ok_or(WorkerError::MissingInput)?;
                    let owner = owner_of(chown)?;
                    let opts = CopyOptions {
                        owner,
                        chmod: chmod.clone(),
                        exclude: exclude.clone(),
                        parents: *parents,
                    };
                    upper.copy(source.as_ref(), src, dest, &opts, *unpack)?;
                }
                FileAction::Mkdir { path, chown, .. } => {
                    let owner = owner_of(chown)?;
                    upper.mkdir(path, owner)?;
                }
                FileAction::Mkfile {
                    path,
                    mode,
                    data,
                    chown,
                } => {
                    let owner = owner_of(chown)?;
                    upper.mkfile(path, data.as_bytes(), *mode, owner)?;
                }
                FileAction::Download {
                    url,
                    dest,
                    checksum,
                    chown,
                    chmod,
                } => {
                    let owner = owner_of(chown)?;
                    let got = self.downloads.fetch(url, checksum.as_deref())?;
                    // Docker gives downloaded files mode 0600 unless --chmod says otherwise.
                    let mode = match chmod {
                        Some(spec) => apply_chmod(spec, 0o600, false)?,
                        None => 0o600,
                    };
                    upper.put_file(
                        &got.path,
                        dest,
                        &got.filename,
                        mode,
                        owner,
                        got.last_modified,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// How git reaches remotes: `--ssh default`'s agent, `--network-timeout`'s limits.
    fn git_options(&self) -> crate::git::GitOptions {
        crate::git::GitOptions {
            ssh_auth_sock: self.exec.ssh.get("default").cloned(),
            low_speed: self
                .network_timeouts
                .map(|t| (t.min_rate.max(1), t.stall.as_secs().max(1))),
        }
    }

    /// The commit `source` names, resolved once per build.
    fn resolve_git(
        &self,
        source: &kiln_ops::GitSource,
    ) -> Result<crate::git::Resolved, crate::git::GitError> {
        let key = (source.remote.clone(), source.reference.clone());
        let known = self
            .git_commits
            .lock()
            .expect("git lock")
            .get(&key)
            .cloned();
        if let Some(r) = known {
            // The same reference with another --checksum is checked on its own.
            crate::git::check_checksum(source, &r)?;
            return Ok(r);
        }
        let r = crate::git::resolve(source, &self.git_options())?;
        self.git_commits
            .lock()
            .expect("git lock")
            .insert(key, r.clone());
        Ok(r)
    }

    /// A git source: its checkout at the resolved commit, as one layer.
    fn git_op(&self, id: VertexId, source: &kiln_ops::GitSource) -> Result<Output> {
        let commit = self.resolve_git(source).map_err(Box::new)?.commit;
        let out = self.snapshots.temp_dir("git")?;
        let scratch = self.snapshots.temp_dir("git-repo")?;
        crate::git::checkout(
            source,
            &commit,
            out.path(),
            scratch.path(),
            &self.git_options(),
        )
        .map_err(Box::new)?;
        drop(scratch);
        let layer = self.commit_layer(id, out)?;
        Ok(Output::Fs {
            layers: vec![layer],
            added: true,
        })
    }

    /// Writes a file op's result kept in memory as a layer blob, each file read once
    /// from its source; no snapshot is made (a later build that needs one unpacks it).
    fn commit_entries(&self, entries: &kiln_fs::Entries) -> Result<LayerRef> {
        let entries = entries
            .iter()
            .map(|(rel, node)| layer_entry(rel, node.clone()))
            .collect();
        self.write_blob(|out| {
            kiln_layer::write_layer_entries_with(entries, &self.layer_opts, out, &open_archive)
        })
    }

    /// Writes a layer blob with `write` and records its chunks.
    fn write_blob(
        &self,
        write: impl FnOnce(
            &mut dyn kiln_layer::BlobSink,
        ) -> Result<kiln_layer::LayerInfo, kiln_layer::LayerError>,
    ) -> Result<LayerRef> {
        write_layer_blob(self.store, &self.layer_opts, None, write)
    }

    /// Writes a diff directory as a layer blob and keeps the directory as its snapshot.
    fn commit_layer(&self, id: VertexId, dir: tempfile::TempDir) -> Result<LayerRef> {
        let in_image = self.image_chain.as_ref().is_none_or(|c| c.contains(&id));
        if !in_image && !self.lazy.contains(&id) {
            return self.commit_snapshot(dir);
        }
        let layer =
            self.write_blob(|out| kiln_layer::write_layer(dir.path(), &self.layer_opts, out))?;
        if self.lazy.contains(&id) {
            // Deleted before the kernel writes it back, the tree costs no disk writes.
            let handle = std::thread::spawn(move || drop(dir));
            self.trash.lock().expect("trash lock").push(handle);
        } else {
            self.commit_recorded(dir, &layer, &self.layer_opts)?;
        }
        Ok(layer)
    }

    /// Moves `dir` into place as the snapshot of `layer`. When it is our directory that
    /// got there (not one another build placed first), records that `layer`'s blob can
    /// be written again from it with `opts`, so that the blob need not be kept. Returns
    /// the snapshot and whether it was recorded.
    fn commit_recorded(
        &self,
        dir: tempfile::TempDir,
        layer: &LayerRef,
        opts: &LayerOptions,
    ) -> Result<(std::path::PathBuf, bool)> {
        let ours = crate::recreate::Identity::of(dir.path());
        let snapshot = self.snapshots.commit(dir, &layer.diff_id)?;
        let recorded = match ours {
            Some(ours) if crate::recreate::Identity::of(&snapshot) == Some(ours) => {
                crate::recreate::record(self.store, layer, opts, ours)?;
                true
            }
            _ => false,
        };
        Ok((snapshot, recorded))
    }

    /// Keeps a diff directory as a snapshot with no blob: the layer of a step the built
    /// image does not hold (a builder stage's, which `COPY --from` and mounts read from
    /// its snapshot). It is known as an uncompressed layer, whose digest is its diff_id,
    /// so that only the tar is hashed; its blob is written from the snapshot (digest
    /// checked) if a push, an export or a later image needs it, and compressed there.
    /// BuildKit likewise leaves a snapshot's diff uncomputed until an export asks.
    fn commit_snapshot(&self, dir: tempfile::TempDir) -> Result<LayerRef> {
        let opts = LayerOptions {
            compression: kiln_layer::Compression::Uncompressed,
            source_date_epoch: self.layer_opts.source_date_epoch,
            skip: None,
            chunk_cache: None,
        };
        let layer = LayerRef::from(kiln_layer::write_layer(dir.path(), &opts, std::io::sink())?);
        let (snapshot, recorded) = self.commit_recorded(dir, &layer, &opts)?;
        // Another build placed the same tree first: the blob is written from it now, as
        // nothing records how to write it later.
        if !recorded && !self.store.has_blob(&layer.digest) {
            write_layer_blob(self.store, &opts, Some(&layer.digest), |out| {
                kiln_layer::write_layer(&snapshot, &opts, out)
            })?;
        }
        Ok(layer)
    }
}

/// A file op's entry as the layer writer takes it.
fn layer_entry(rel: &str, node: kiln_fs::Node) -> kiln_layer::LayerEntry {
    use kiln_fs::NodeKind;
    use kiln_layer::EntryKind;
    kiln_layer::LayerEntry {
        path: kiln_fs::name::to_path(rel).into_owned(),
        kind: match node.kind {
            NodeKind::Dir => EntryKind::Dir,
            NodeKind::File { from, len, link } => EntryKind::File { from, len, link },
            NodeKind::Data(bytes) => EntryKind::Data(bytes),
            NodeKind::Member {
                archive,
                offset,
                len,
                link,
            } => EntryKind::Member {
                archive,
                offset,
                len,
                link,
            },
            NodeKind::Symlink(target) => EntryKind::Symlink(target),
        },
        mode: node.mode,
        uid: node.owner.uid,
        gid: node.owner.gid,
        // Set by the in-memory tree for every entry.
        mtime: node.mtime.map(|t| t.unix_seconds()).unwrap_or_default(),
        xattrs_from: node.xattrs_from,
    }
}

/// The archives `ADD` extracts, for the layer writer: their members are read from them.
fn open_archive(
    path: &std::path::Path,
    offset: u64,
) -> std::io::Result<Box<dyn std::io::Read + Send>> {
    kiln_fs::open_archive_at(path, offset)
}

/// The hardlink keys of the files of layers listed from their blobs (no device has
/// it, nor is it [`kiln_fs::ARCHIVE_LINK_DEV`]).
const LISTED_LINK_DEV: u64 = u64::MAX - 1;

/// Hardlink keys of listed layers, unique in the process.
static LISTED_LINKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Gives the hardlinks of a layer's entries keys of their own, as the layer's snapshot
/// would have inodes of its own: the same source file copied by two ops is two files
/// to a later COPY that reads both layers, not hardlinks of each other.
fn layer_links(entries: &mut kiln_fs::Entries) {
    use kiln_fs::NodeKind;
    let mut keys = HashMap::new();
    for node in entries.values_mut() {
        if let NodeKind::File { link: Some(k), .. } | NodeKind::Member { link: Some(k), .. } =
            &mut node.kind
        {
            *k = *keys.entry(*k).or_insert_with(|| {
                let n = LISTED_LINKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (LISTED_LINK_DEV, n)
            });
        }
    }
}

/// A listed layer as the entries of an in-memory layer: files are the blob's members.
fn listed_entries(list: Vec<kiln_layer::ListedEntry>, blob: &std::path::Path) -> kiln_fs::Entries {
    use kiln_fs::{Ids, Node, NodeKind};
    use kiln_layer::ListedKind;
    use std::os::unix::ffi::OsStrExt;
    let rel = |p: &[u8]| kiln_fs::name::encode(std::ffi::OsStr::from_bytes(p)).into_owned();
    let mut out = kiln_fs::Entries::new();
    for e in list {
        let path = rel(&e.path);
        let kind = match e.kind {
            ListedKind::Dir => NodeKind::Dir,
            ListedKind::File { offset, len } => NodeKind::Member {
                archive: blob.to_path_buf(),
                offset,
                len,
                link: None,
            },
            ListedKind::Symlink(t) => {
                NodeKind::Symlink(std::ffi::OsStr::from_bytes(&t).to_owned().into())
            }
            ListedKind::Hardlink(target) => {
                // Listed before as a regular file: both get its inode's key.
                let Some(first) = out.get_mut(&rel(&target)) else {
                    continue;
                };
                if let NodeKind::Member {
                    link: link @ None, ..
                } = &mut first.kind
                {
                    let n = LISTED_LINKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *link = Some((LISTED_LINK_DEV, n));
                }
                let node = first.clone();
                out.insert(path, node);
                continue;
            }
        };
        out.insert(
            path,
            Node {
                kind,
                mode: e.mode,
                owner: Ids {
                    uid: e.uid,
                    gid: e.gid,
                },
                mtime: Some(filetime::FileTime::from_unix_time(e.mtime, 0)),
                xattrs_from: None,
            },
        );
    }
    out
}

/// Borrows the worker's context as a boxed source.
struct ContextRef<'a>(&'a ContextFs);

impl SourceFs for ContextRef<'_> {
    fn lstat(&self, rel: &str) -> Option<Entry> {
        self.0.lstat(rel)
    }
    fn list(&self, rel: &str) -> Vec<String> {
        self.0.list(rel)
    }
    fn keeps_owners(&self) -> bool {
        self.0.keeps_owners()
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

impl KeySource for BuildWorker<'_> {
    fn chain_id(&self, reference: &str, platform: &Platform) -> Result<Digest, KeyError> {
        Ok(self.images.get(reference, platform)?.chain_id.clone())
    }

    fn download_digest(&self, url: &str) -> Result<Digest, KeyError> {
        Ok(self.downloads.fetch(url, None)?.digest.clone())
    }

    fn git_commit(&self, source: &kiln_ops::GitSource) -> Result<String, KeyError> {
        Ok(self.resolve_git(source).map_err(Box::new)?.commit)
    }

    fn context_checksum(&self, context: &str, sources: &[&str]) -> Result<Digest, KeyError> {
        let (fs, memo) = self
            .context_fs(context)
            .map_err(|_| KeyError::NoNamedContext(context.to_string()))?;
        cachekey::context_checksum(fs, Some(memo), sources)
    }
}

/// What the cache index keeps for a key.
#[derive(Serialize, Deserialize)]
struct Record {
    output: Output,
    /// The step that made it (`[stage] INSTRUCTION`), for `kiln du`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// The build record id of the build that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    build: Option<String>,
}

/// `[stage] INSTRUCTION` of a vertex's first origin, at most 100 characters.
pub fn describe(vertex: &Vertex) -> Option<String> {
    let text = match (vertex.origins.first(), &vertex.op) {
        (Some(o), _) => format!("[{}] {}", o.stage_name, o.instruction.trim()),
        (None, Op::Image { reference, .. }) => format!("FROM {reference}"),
        (None, _) => return None,
    };
    Some(match text.char_indices().nth(100) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    })
}

/// A [`KeySource`] that keeps the file entries it checksums: a build record's inputs,
/// from the same walk as the key.
struct Capturing<'w, 'a> {
    worker: &'w BuildWorker<'a>,
    trees: std::sync::Mutex<Vec<cachekey::TreeEntry>>,
    digests: std::sync::Mutex<Vec<Digest>>,
}

impl KeySource for Capturing<'_, '_> {
    fn chain_id(&self, reference: &str, platform: &Platform) -> Result<Digest, KeyError> {
        self.worker.chain_id(reference, platform)
    }

    fn download_digest(&self, url: &str) -> Result<Digest, KeyError> {
        self.worker.download_digest(url)
    }

    fn git_commit(&self, source: &kiln_ops::GitSource) -> Result<String, KeyError> {
        self.worker.git_commit(source)
    }

    fn context_checksum(&self, context: &str, sources: &[&str]) -> Result<Digest, KeyError> {
        let (fs, memo) = self
            .worker
            .context_fs(context)
            .map_err(|_| KeyError::NoNamedContext(context.to_string()))?;
        let tree = cachekey::context_tree(fs, Some(memo), sources)?;
        let digest = cachekey::TreeDigest::of(&tree);
        self.trees.lock().expect("capture lock").extend(tree);
        self.digests
            .lock()
            .expect("capture lock")
            .push(digest.clone());
        Ok(digest)
    }
}

impl Worker for BuildWorker<'_> {
    type Output = Output;
    type Error = WorkerError;

    fn content_key(
        &self,
        id: VertexId,
        vertex: &Vertex,
        inputs: &[Output],
    ) -> Result<Option<String>> {
        let Some(rec) = self.recorder else {
            return Ok(cachekey::content_key(&vertex.op, inputs, self)?);
        };
        let capture = Capturing {
            worker: self,
            trees: Default::default(),
            digests: Default::default(),
        };
        let key = cachekey::content_key(&vertex.op, inputs, &capture)?;
        let mut captured = crate::explain::op_inputs(&vertex.op);
        let digests = capture.digests.into_inner().expect("capture lock");
        if !digests.is_empty() {
            // The set's id is its tree digest (the files' part of the cache key): a set
            // the store already keeps costs one stat, not a copy of 20,000 entries.
            let id = match digests.as_slice() {
                [one] => one.to_string(),
                many => kiln_cache::sha256_of(
                    many.iter()
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                        .as_bytes(),
                )
                .to_string(),
            };
            if !self.store.fileset_reuse(&id) {
                let trees = capture.trees.into_inner().expect("capture lock");
                captured.files = Some(crate::explain::file_set(&trees));
            }
            captured.files_id = Some(id);
        }
        match &vertex.op {
            Op::Image {
                reference,
                platform,
                ..
            } => {
                if let Some(k) = &key {
                    // Resolved a moment ago for the key: `get` answers from memory.
                    let manifest = self
                        .images
                        .get(reference, platform)
                        .ok()
                        .map(|i| i.manifest_digest.to_string());
                    captured.base = Some(kiln_cache::BaseInput {
                        reference: reference.clone(),
                        digest: k.clone(),
                        manifest,
                    });
                }
            }
            Op::File(f)
                if f.actions
                    .iter()
                    .any(|a| matches!(a, FileAction::Download { .. })) =>
            {
                captured.content = key.clone();
            }
            // The commit the reference named: what a miss is explained by.
            Op::Git(_) => captured.content = key.clone(),
            _ => {}
        }
        rec.capture(id, captured);
        Ok(key)
    }

    fn load(&self, key: &Digest, _: &Vertex) -> Result<Option<Output>> {
        let Some(rec) = self.store.cache_get_as::<Record>(key.as_str())? else {
            return self.load_imported(key);
        };
        // Leased first, then checked: a collector either sees the lease or has already
        // moved the record, which is then a miss. Marking it used is its last-use time.
        self.lease_layers(rec.output.layers(), &[key.as_str()])?;
        if !self
            .store
            .mark_used(&self.store.cache_record_path(key.as_str())?)?
        {
            return Ok(None);
        }
        // A record whose blobs are gone (and cannot be fetched) is a miss.
        if !self.layers_available(&rec.output)? {
            if let Some(r) = self.recorder {
                r.result_gone(key);
            }
            return Ok(None);
        }
        if let Some(r) = self.recorder {
            r.found(key, rec.build);
        }
        Ok(Some(rec.output))
    }

    fn missed(&self, id: VertexId, _: &Vertex, key: &Digest) {
        if let Some(r) = self.recorder {
            r.missed(id, key);
        }
    }

    fn execute(
        &self,
        id: VertexId,
        vertex: &Vertex,
        inputs: &[Output],
        cancel: &AtomicBool,
    ) -> Result<Output> {
        match &vertex.op {
            Op::Image {
                reference,
                platform,
                ..
            } => {
                let img = self.images.get(reference, platform)?;
                self.lease_layers(
                    &img.layers,
                    &[img.manifest_digest.as_str(), img.config_digest.as_str()],
                )?;
                Ok(Output::Fs {
                    layers: img.layers.clone(),
                    added: false,
                })
            }
            Op::Context { name, .. } => Ok(Output::Context(name.clone())),
            Op::Git(g) => self.git_op(id, g),
            Op::File(f) => {
                self.fetch_input_layers(id, inputs)?;
                self.file_op(id, f, inputs, &vertex.inputs)
            }
            Op::Merge => {
                let mut layers = Vec::new();
                for i in inputs {
                    layers.extend(i.layers().iter().cloned());
                }
                Ok(Output::Fs {
                    layers,
                    added: false,
                })
            }
            Op::Exec(e) => {
                self.fetch_input_layers(id, inputs)?;
                self.exec_op(id, e, inputs, cancel)
            }
        }
    }

    fn save(&self, key: &Digest, vertex: &Vertex, output: &Output) -> Result<()> {
        if matches!(vertex.op, Op::Context { .. }) {
            return Ok(());
        }
        self.lease_layers(output.layers(), &[key.as_str()])?;
        self.store
            .cache_put_as(
                key.as_str(),
                &Record {
                    output: output.clone(),
                    description: describe(vertex),
                    build: self.recorder.map(|r| r.id()),
                },
            )
            .map_err(WorkerError::CacheRecord)
    }
}

/// The file ops of `graph` that only later file ops read (as their base or a COPY
/// source), each of which is a leaf or such an op itself: their results are never read
/// as a directory (no RUN, mount or merge above them in this build), so they are written
/// straight from their sources like a leaf, and the ops above read their kept entries.
pub fn streamed_chain(graph: &kiln_ops::BuildGraph) -> std::collections::HashSet<VertexId> {
    let mut out = std::collections::HashSet::new();
    // Dependents first: whether one is streamed is known when its inputs are looked at.
    for id in graph.topo_order().into_iter().rev() {
        if !matches!(graph.vertex(id).op, Op::File(_)) {
            continue;
        }
        let deps = graph.dependents(id);
        let only_file_ops = deps.iter().all(|d| {
            matches!(graph.vertex(*d).op, Op::File(_))
                && (graph.dependents(*d).is_empty() || out.contains(d))
        });
        if !deps.is_empty() && only_file_ops {
            out.insert(id);
        }
    }
    out
}

/// The vertices of `graph` whose layers the image built from `root` can hold: `root`
/// and, down from it, what each result is built on (a RUN's or a COPY's base, every
/// input of a merge). A builder stage's steps, read only through `COPY --from` or a
/// mount, are not among them.
pub fn image_chain(
    graph: &kiln_ops::BuildGraph,
    root: Option<VertexId>,
) -> std::collections::HashSet<VertexId> {
    let mut out = std::collections::HashSet::new();
    let mut todo: Vec<VertexId> = root.into_iter().collect();
    while let Some(id) = todo.pop() {
        if !out.insert(id) {
            continue;
        }
        let v = graph.vertex(id);
        match &v.op {
            // A RUN runs on its first input (the worker's base), a COPY with a base too.
            Op::Exec(_) => todo.extend(v.inputs.first()),
            Op::File(f) if f.has_base => todo.extend(v.inputs.first()),
            Op::Merge => todo.extend(v.inputs.iter().copied()),
            _ => {}
        }
    }
    out
}

/// Results by vertex, as the solver returns them.
pub type Results = HashMap<VertexId, kiln_solver::Solved<Output>>;

/// The store's chunk index as the layer writer's chunk cache.
pub(crate) fn store_chunks(store: &Store) -> std::sync::Arc<dyn kiln_layer::ChunkCache> {
    std::sync::Arc::new(chunks::StoreChunks::new(store))
}

/// Writes a layer blob in `opts`' compression with `write` into `store` and records its
/// chunks, also in `opts`' chunk cache for the next layers. Chunks found in earlier
/// blobs are referenced there, not copied, where the store can (a spliced blob, see
/// `kiln_cache::BlobReader`). With `expect`, a blob with another digest is not stored
/// (a layer written again from its snapshot).
pub(crate) fn write_layer_blob(
    store: &Store,
    opts: &LayerOptions,
    expect: Option<&Digest>,
    write: impl FnOnce(
        &mut dyn kiln_layer::BlobSink,
    ) -> Result<kiln_layer::LayerInfo, kiln_layer::LayerError>,
) -> Result<LayerRef> {
    // The layer writer hashes the blob as it writes it.
    let mut writer = store.prehashed_blob_writer()?;
    // No buffer of its own: the blob writer has one, and referenced ranges must stay
    // in order with the bytes written around them.
    let info = write(&mut chunks::StoreSink(&mut writer))?;
    if let Some(expected) = expect
        && *expected != info.digest
    {
        // Dropped unwritten: the temporary file goes with the writer.
        return Err(WorkerError::Rewritten {
            expected: expected.clone(),
            actual: info.digest,
        });
    }
    writer.commit(Some(&info.digest))?;
    // A layer of one chunk is only ever reused whole, through the cache record.
    if let (Some(codec), true) = (
        kiln_layer::chunk_codec(opts.compression),
        info.chunks.len() > 1,
    ) {
        store.record_chunks(&codec, &info.digest, &chunks::entries(&info.chunks))?;
        if let Some(cache) = &opts.chunk_cache {
            cache.learn(&codec, info.digest.as_ref(), &info.chunks);
        }
    }
    Ok(info.into())
}

/// The stored layers `layers` (made by build steps) in `compression`: each kept if it
/// has that media type already, else replaced by a new blob converted from it, with the
/// bytes a build writing it in that compression gives (the diff_id is the same). A
/// cache hit made in another compression is converted this way, as BuildKit converts
/// at export, instead of running the step again.
pub fn layers_in_compression(
    store: &Store,
    layers: &mut [LayerRef],
    compression: kiln_layer::Compression,
) -> Result<()> {
    // One chunk cache for them all: its index is read once.
    let opts = LayerOptions {
        compression,
        source_date_epoch: None,
        skip: None,
        chunk_cache: Some(std::sync::Arc::new(chunks::StoreChunks::new(store))),
    };
    for layer in layers
        .iter_mut()
        .filter(|l| l.media_type != compression.media_type())
    {
        let file = store.open_blob(&layer.digest)?;
        let what = layer.digest.to_string();
        let converted = write_layer_blob(store, &opts, None, |out| {
            kiln_layer::recompress_layer(std::io::BufReader::new(file), &opts, out, &what)
        })?;
        if converted.diff_id != layer.diff_id {
            return Err(WorkerError::Layer(kiln_layer::LayerError::DiffIdMismatch {
                expected: layer.diff_id.clone(),
                actual: converted.diff_id,
            }));
        }
        *layer = converted;
    }
    Ok(())
}
mod chunks;
mod exec;
mod image;
pub mod ssh;

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
