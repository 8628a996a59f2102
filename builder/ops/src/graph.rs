//! The build graph: operations (image source, local context, exec, file, merge) as
//! vertices with content-derived definition digests, and the dependencies between them.
//!
//! The solver knows nothing about Dockerfiles: it only sees these ops. A vertex's
//! definition digest covers its op and the digests of its inputs, so two vertices with
//! the same op over the same inputs are one vertex (and share one cache entry).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use kiln_oci::Digest;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::{ExecMount, Range};

/// The build's platforms: kiln's one platform type, shared with the registry client
/// (see `kiln_oci` for why it lives below both).
pub use kiln_oci::Platform;

/// `--chown` after expansion: names are resolved against the image at build time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Chown {
    /// User name or numeric id.
    pub user: String,
    /// Group name or numeric id, if given.
    pub group: Option<String>,
}

/// One file action of a [`FileOp`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum FileAction {
    /// Copy `src` (from the vertex input number `input`) to `dest`.
    Copy {
        /// Index into the vertex's inputs.
        input: usize,
        /// Source path or wildcard, relative to the input's root.
        src: String,
        /// Destination path (absolute; a trailing `/` means "into this directory").
        dest: String,
        /// Owner of the copied files.
        chown: Option<Chown>,
        /// Mode (octal or symbolic) for the copied files.
        chmod: Option<String>,
        /// Extract local archives (ADD).
        unpack: bool,
        /// Keep the source's parent directories (`--parents`).
        parents: bool,
        /// Patterns to leave out (`--exclude`).
        exclude: Vec<String>,
    },
    /// Create a directory (with parents).
    Mkdir {
        /// Absolute path.
        path: String,
        /// Mode.
        mode: u32,
        /// Owner.
        chown: Option<Chown>,
    },
    /// Create a file with the given content (heredoc COPY).
    Mkfile {
        /// Absolute path.
        path: String,
        /// Mode.
        mode: u32,
        /// Content.
        data: String,
        /// Owner.
        chown: Option<Chown>,
    },
    /// Download a URL (ADD https://...).
    Download {
        /// The URL.
        url: String,
        /// Destination path.
        dest: String,
        /// Expected digest (`--checksum`).
        checksum: Option<String>,
        /// Owner.
        chown: Option<Chown>,
        /// Mode.
        chmod: Option<String>,
    },
}

/// Network mode of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network (the default, as in BuildKit's default worker here).
    Host,
    /// A private network namespace with only loopback.
    None,
}

/// A process run in the rootfs of input 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ExecOp {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=value`, in order.
    pub env: Vec<String>,
    /// Proxy build args (`HTTP_PROXY=...`, see `convert::PROXY_ARGS`) given with
    /// `--build-arg` and not declared by `ARG`: the process gets them after `env`, but
    /// they are left out of the definition digest, as BuildKit leaves its `ProxyEnv` out
    /// of the exec's cache key, so a build behind a proxy shares its cache with builds
    /// that are not.
    #[serde(skip)]
    pub proxy_env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User (`name`, `uid`, `uid:gid`, ...), empty for root.
    pub user: String,
    /// Network mode.
    pub network: Network,
    /// `--security=insecure`.
    pub insecure: bool,
    /// Extra mounts.
    pub mounts: Vec<ExecMount>,
    /// `--add-host HOST:IP` lines added to the step's `/etc/hosts`, as BuildKit's
    /// `ExtraHosts`: part of the definition (a step that reads them must not hit a
    /// result made with others), left out of it when empty so that existing keys hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<ExtraHost>,
    /// `--shm-size`: the size of the step's `/dev/shm` in bytes (None: 64 MiB, Docker's
    /// default); part of the definition when set, as BuildKit's `ShmSize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// The platform the process runs for (`linux/arm64`) when it is not the build
    /// platform's: part of the definition, as BuildKit's exec `Platform`, so that two
    /// platforms of a multi-platform build never share a RUN's result; left out when
    /// native so that existing keys hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// One `--add-host` entry: a name and the address it resolves to in `/etc/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ExtraHost {
    /// Host name.
    pub host: String,
    /// IPv4 or IPv6 address.
    pub ip: std::net::IpAddr,
}

/// One or more file actions applied on top of input 0 (or on an empty tree).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FileOp {
    /// Whether input 0 is the base tree; `false` starts from empty (`--link`, `FROM scratch`).
    pub has_base: bool,
    /// Actions, applied in order.
    pub actions: Vec<FileAction>,
}

/// An operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// A base image from a registry, the local store or an OCI layout.
    Image {
        /// The reference as written (after expansion).
        reference: String,
        /// The platform to pick.
        platform: Platform,
        /// The content digest when the resolver knew it.
        digest: Option<Digest>,
    },
    /// The local build context (its files are checksummed at solve time).
    Context {
        /// `context` (named contexts could come later).
        name: String,
        /// `.dockerignore` patterns.
        exclude: Vec<String>,
    },
    /// A git repository at one commit (`ADD https://host/repo.git#ref:subdir`): its
    /// files, owned 0:0. Its cache key is the commit the reference resolves to.
    Git(GitSource),
    /// Run a process.
    Exec(ExecOp),
    /// Change files.
    File(FileOp),
    /// Layer input 1.. on top of input 0 (`COPY --link`).
    Merge,
}

/// A git source: which repository, which reference, which part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct GitSource {
    /// The repository (`https://host/repo.git`, `git@host:repo.git`, `git://...`).
    pub remote: String,
    /// Branch, tag or commit; `None` for the repository's default branch.
    pub reference: Option<String>,
    /// The directory of the repository to take; `None` for all of it.
    pub subdir: Option<String>,
    /// Keep the `.git` directory (`ADD --keep-git-dir`).
    pub keep_git_dir: bool,
    /// A hex prefix the commit (or annotated tag) must have (`ADD --checksum`).
    pub checksum: Option<String>,
}

/// Where a vertex came from in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Stage index.
    pub stage: usize,
    /// Stage name or its index as text.
    pub stage_name: String,
    /// The instruction as written.
    pub instruction: String,
    /// Its lines.
    pub range: Range,
}

/// Identifies a vertex in a [`BuildGraph`].
pub type VertexId = NodeIndex<u32>;

/// A vertex: an op, its inputs and its definition digest.
#[derive(Debug, Clone)]
pub struct Vertex {
    /// The operation.
    pub op: Op,
    /// Inputs, in the order the op refers to them.
    pub inputs: Vec<VertexId>,
    /// `sha256:` of the canonical JSON of the op and its inputs' digests.
    pub digest: Digest,
    /// Every Dockerfile place that produced this vertex (several when merged).
    pub origins: Vec<Origin>,
}

/// The build graph: vertices, edges from input to user, merged by digest.
#[derive(Debug, Clone, Default)]
pub struct BuildGraph {
    graph: DiGraph<Vertex, usize>,
    by_digest: HashMap<Digest, VertexId>,
}

#[derive(Serialize)]
struct Definition<'a> {
    op: &'a Op,
    inputs: Vec<&'a str>,
}

impl BuildGraph {
    /// Adds a vertex, or returns the existing one with the same definition digest.
    pub fn add(&mut self, op: Op, inputs: Vec<VertexId>, origin: Option<Origin>) -> VertexId {
        let digest = {
            let def = Definition {
                op: &op,
                inputs: inputs
                    .iter()
                    .map(|i| self.graph[*i].digest.as_str())
                    .collect(),
            };
            let bytes = serde_json::to_vec(&def).expect("ops serialize");
            sha256_digest(&bytes)
        };
        if let Some(&id) = self.by_digest.get(&digest) {
            if let Some(o) = origin {
                self.graph[id].origins.push(o);
            }
            return id;
        }
        let id = self.graph.add_node(Vertex {
            op,
            inputs: inputs.clone(),
            digest: digest.clone(),
            origins: origin.into_iter().collect(),
        });
        for (pos, input) in inputs.iter().enumerate() {
            self.graph.add_edge(*input, id, pos);
        }
        self.by_digest.insert(digest, id);
        id
    }

    /// The vertex with this id.
    pub fn vertex(&self, id: VertexId) -> &Vertex {
        &self.graph[id]
    }

    /// Number of vertices.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether there are no vertices.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// All vertex ids in a dependency order (inputs first).
    pub fn topo_order(&self) -> Vec<VertexId> {
        // Vertices only ever point at earlier ones, so the graph is acyclic by
        // construction; toposort cannot fail.
        petgraph::algo::toposort(&self.graph, None).expect("build graph is acyclic")
    }

    /// The vertices that use `id` as an input.
    pub fn dependents(&self, id: VertexId) -> Vec<VertexId> {
        self.graph
            .neighbors_directed(id, Direction::Outgoing)
            .collect()
    }

    /// Keeps only the vertices needed for `roots`; returns the new ids of the roots.
    pub fn prune(&self, roots: &[VertexId]) -> (BuildGraph, Vec<VertexId>) {
        // One walk from the roots up their inputs marks what is needed: O(V + E). (A
        // path search per vertex and root was cubic for a long Dockerfile.)
        let mut needed: HashSet<VertexId> = HashSet::new();
        let mut todo: Vec<VertexId> = roots.to_vec();
        while let Some(id) = todo.pop() {
            if needed.insert(id) {
                todo.extend(self.graph[id].inputs.iter().copied());
            }
        }
        let mut out = BuildGraph::default();
        let mut map: BTreeMap<VertexId, VertexId> = BTreeMap::new();
        for id in self.topo_order() {
            if !needed.contains(&id) {
                continue;
            }
            let v = &self.graph[id];
            let inputs = v.inputs.iter().map(|i| map[i]).collect();
            let new = out.add(v.op.clone(), inputs, None);
            out.graph[new].origins.extend(v.origins.iter().cloned());
            map.insert(id, new);
        }
        let roots = roots.iter().map(|r| map[r]).collect();
        (out, roots)
    }

    /// Groups vertices into levels: every vertex's inputs are in earlier levels, so the
    /// vertices of one level can run at the same time.
    pub fn levels(&self) -> Vec<Vec<VertexId>> {
        let mut depth: HashMap<VertexId, usize> = HashMap::new();
        let mut levels: Vec<Vec<VertexId>> = Vec::new();
        for id in self.topo_order() {
            let d = self.graph[id]
                .inputs
                .iter()
                .map(|i| depth[i] + 1)
                .max()
                .unwrap_or(0);
            depth.insert(id, d);
            if levels.len() <= d {
                levels.resize(d + 1, Vec::new());
            }
            levels[d].push(id);
        }
        levels
    }
}

/// A short human description of an op.
pub fn describe(op: &Op) -> String {
    match op {
        Op::Image {
            reference,
            platform,
            ..
        } => format!("image {reference} ({platform})"),
        Op::Context { name, exclude } => {
            format!("local context {name:?} ({} ignore patterns)", exclude.len())
        }
        Op::Git(g) => format!(
            "git {}#{}{}",
            g.remote,
            g.reference.as_deref().unwrap_or(""),
            g.subdir
                .as_deref()
                .map(|s| format!(":{s}"))
                .unwrap_or_default()
        ),
        Op::Exec(e) => format!("exec {:?}", e.args),
        Op::File(f) => {
            let parts: Vec<String> = f
                .actions
                .iter()
                .map(|a| match a {
                    FileAction::Copy { src, dest, .. } => format!("copy {src} -> {dest}"),
                    FileAction::Mkdir { path, .. } => format!("mkdir {path}"),
                    FileAction::Mkfile { path, .. } => format!("mkfile {path}"),
                    FileAction::Download { url, dest, .. } => format!("download {url} -> {dest}"),
                })
                .collect();
            format!("file {}", parts.join("; "))
        }
        Op::Merge => "merge".to_string(),
    }
}

impl BuildGraph {
    /// Graphviz text of the graph.
    pub fn to_dot(&self) -> String {
        let mut s = String::from(
            "digraph kiln {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for id in self.topo_order() {
            let v = &self.graph[id];
            let label = match v.origins.first() {
                Some(o) => format!("[{}] {}", o.stage_name, o.instruction),
                None => describe(&v.op),
            };
            let short = &v.digest.hex()[..12];
            let _ = writeln!(
                s,
                "  v{} [label={}];",
                id.index(),
                dot_quote(&format!("{label}\n{short}"))
            );
        }
        for id in self.topo_order() {
            for input in &self.graph[id].inputs {
                let _ = writeln!(s, "  v{} -> v{};", input.index(), id.index());
            }
        }
        s.push_str("}\n");
        s
    }
}

/// `text` as a Graphviz quoted string: `"` and `\` escaped, a newline as `\n` (a line
/// break in a label), other control characters as `\xNN` so that the output stays one
/// line per vertex.
fn dot_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `sha256:<hex>` of some bytes: kiln's one sha256, shared with the cache, layer codec
/// and builder.
pub use kiln_oci::digest::sha256_digest;
