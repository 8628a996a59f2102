//! Command-line interface: Docker's and BuildKit's flags where they make sense.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use kiln_builder::build::{BuildError, BuildRequest, OutputSpec, build};
use kiln_builder::progress::ProgressMode;
use kiln_builder::remote_cache::{CacheToSpec, parse_cache_from};
use kiln_frontend::convert::{self, ConvertOptions, NoResolver};
use kiln_frontend::{Diagnostic, dockerignore, parser};
use kiln_layer::Compression;
use kiln_ops::Platform;

/// kiln: build OCI images from Dockerfiles.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about)]
struct Cli {
    /// The store directory (default: $KILN_ROOT, /var/lib/kiln for root, else
    /// ~/.local/share/kiln).
    #[arg(long, global = true, env = "KILN_ROOT")]
    root: Option<PathBuf>,
    /// A registry (`HOST[:PORT]`) to speak plain HTTP to (loopback registries always are);
    /// repeatable.
    #[arg(long = "insecure-registry", global = true)]
    insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM) to trust for registries.
    #[arg(long = "registry-ca", global = true)]
    registry_ca: Option<PathBuf>,
    /// Give up a registry request or `ADD <url>` download (then retry it) after this long
    /// without a byte, or when it averages under 16 KiB/s over that long: `30s`, `2m`,
    /// `500ms`, or seconds.
    #[arg(
        long = "network-timeout",
        global = true,
        env = "KILN_NETWORK_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_timeout
    )]
    network_timeout: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse a Dockerfile and print its syntax tree.
    Parse {
        /// Print BuildKit's dump format (the only format so far).
        #[arg(long)]
        dump: bool,
        /// The Dockerfile (`-` for standard input).
        file: PathBuf,
    },
    /// Build an image from a Dockerfile and a context directory.
    Build(Box<BuildArgs>),
    /// List images in the store.
    Images(ImagesArgs),
    /// Show containers' or images' configuration as JSON (containers first, as Docker).
    Inspect {
        /// Container name or id, or image name or id (prefix).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run a command in a new container (host or no network: no bridge networks, no
    /// port publishing).
    #[command(disable_help_flag = true)]
    Run(Box<crate::container_commands::RunArgs>),
    /// List containers.
    Ps {
        /// Show all containers (default: running ones).
        #[arg(short, long)]
        all: bool,
        /// Only show container ids.
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Display total file sizes: the writable layer's, and with the image's
        /// (`virtual`).
        #[arg(short, long)]
        size: bool,
        /// Format output using a Go template (Docker's fields: `{{.ID}}`, `{{.Names}}`,
        /// `{{.Image}}`, `{{.Command}}`, `{{.CreatedAt}}`, `{{.RunningFor}}`,
        /// `{{.Status}}`, `{{.State}}`, `{{.Size}}`, `{{.Mounts}}`, `{{.Ports}}`,
        /// `{{.Labels}}`, `{{.Label "KEY"}}`, `{{.Networks}}`, `{{.LocalVolumes}}`);
        /// `table TEMPLATE` adds headers and aligns columns, `json` prints each
        /// container as JSON.
        #[arg(long)]
        format: Option<String>,
    },
    /// Start stopped containers.
    Start {
        /// Attach its output and signals (and exit with its code).
        #[arg(short, long)]
        attach: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop running containers: their StopSignal (SIGTERM), then SIGKILL after a grace
    /// period.
    Stop {
        /// Seconds to wait before killing.
        #[arg(short = 't', long = "time", alias = "timeout", default_value_t = 10)]
        time: u64,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to running containers.
    Kill {
        /// The signal (name or number).
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show a container's output.
    Logs {
        /// Follow the output while the container runs.
        #[arg(short, long)]
        follow: bool,
        /// Container.
        container: String,
    },
    /// Run a command in a running container.
    Exec(crate::container_commands::ExecArgs),
    /// Remove containers (and their writable layers).
    Rm {
        /// Kill and remove a running container.
        #[arg(short, long)]
        force: bool,
        /// Remove the container's anonymous volumes too.
        #[arg(short, long)]
        volumes: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Manage containers.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Show the history of an image.
    History(HistoryArgs),
    /// Pull an image from a registry into the store.
    Pull {
        /// Platform to pick from a multi-platform image (default: the host's).
        #[arg(long)]
        platform: Option<String>,
        /// No progress lines.
        #[arg(short, long)]
        quiet: bool,
        /// `NAME[:TAG|@DIGEST]`.
        reference: String,
    },
    /// Push an image from the store to the registry its name says.
    Push {
        /// Manifest media types: `oci`, or `docker` (schema 2) for registries that refuse
        /// OCI ones.
        #[arg(long, value_parser = ["oci", "docker"], default_value = "oci")]
        media_types: String,
        /// No progress lines.
        #[arg(short, long)]
        quiet: bool,
        /// `NAME[:TAG]`.
        name: String,
    },
    /// Give an image another name.
    Tag {
        /// An image in the store.
        source: String,
        /// The new name.
        target: String,
    },
    /// Check credentials against a registry and save them in the Docker config.
    Login {
        /// User name.
        #[arg(short, long)]
        username: Option<String>,
        /// Password (prefer --password-stdin).
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Registry host (`HOST[:PORT]`).
        server: String,
    },
    /// Remove saved credentials for a registry.
    Logout {
        /// Registry host.
        server: String,
    },
    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// List the changes to files in a container's filesystem (A added, C changed,
    /// D deleted).
    Diff {
        /// Container name or id.
        container: String,
    },
    /// Create a new image from a container's changes.
    Commit {
        /// Apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE,
        /// LABEL, ONBUILD, USER, VOLUME, WORKDIR, STOPSIGNAL); repeatable.
        #[arg(short, long = "change")]
        change: Vec<String>,
        /// Commit message.
        #[arg(short, long)]
        message: Option<String>,
        /// Author (e.g. "Jane <jane@example.com>").
        #[arg(short, long)]
        author: Option<String>,
        /// Container name or id.
        container: String,
        /// `NAME[:TAG]` for the new image.
        name: Option<String>,
    },
    /// Show disk usage (`system df`).
    #[command(subcommand)]
    System(SystemCommand),
    /// Remove one or more images.
    Rmi(RmiArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Show the build cache's disk usage, per cache record.
    Du {
        /// One block per record, with its description and why it is kept.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Remove build cache (least recently used first when pruning to a size).
    Prune {
        /// Also remove the unpacked snapshots of tagged images (their blobs stay).
        #[arg(short, long)]
        all: bool,
        /// Filter: `until=DURATION` (e.g. `until=24h`): only records unused for longer.
        #[arg(long = "filter")]
        filters: Vec<String>,
        /// Prune least recently used records until the store uses at most this much
        /// (`10GB`, `20%` of the disk).
        #[arg(long)]
        max_used_space: Option<String>,
        /// Prune least recently used records until this much of the disk is free
        /// (`10GB`, `10%`).
        #[arg(long)]
        min_free_space: Option<String>,
        /// With `--min-free-space`: keep at least this much build cache however little
        /// of the disk is free (`10GB`, `5%`; default min(10% of the disk, 10GB)).
        #[arg(long)]
        reserved_space: Option<String>,
        /// Show what would be removed, and why, without removing it.
        #[arg(long)]
        dry_run: bool,
        /// Also list the blobs and snapshots removed and the records kept in use.
        #[arg(short, long)]
        verbose: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
    /// Build records: what each build did and why steps missed the cache.
    #[command(subcommand)]
    Builds(BuildsCommand),
    /// Print the shell completion script for kiln (e.g. `kiln completion bash >
    /// /etc/bash_completion.d/kiln`, or `source <(kiln completion zsh)`).
    Completion {
        /// The shell.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// Save one or more images to a tar archive (standard output by default): a Docker
    /// archive (`docker load`-able), or an OCI archive with `--format oci`.
    Save {
        /// Write to a file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// `docker` (docker-archive) or `oci` (oci-archive).
        #[arg(long, value_parser = ["docker", "oci"], default_value = "docker")]
        format: String,
        /// Images (names or ids).
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from a Docker or OCI archive (standard input by default).
    Load {
        /// Read from a tar archive file instead of standard input.
        #[arg(short, long)]
        input: Option<PathBuf>,
        /// Suppress the load output.
        #[arg(short, long)]
        quiet: bool,
    },
}

/// `kiln builds ...`.
#[derive(Subcommand, Debug)]
enum BuildsCommand {
    /// List build records, newest first.
    #[command(alias = "list")]
    Ls {
        /// Only display ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a build record (`--format json` exports it for `build --explain-against`).
    Inspect {
        /// Output format.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
        /// Record id (or a unique prefix).
        id: String,
    },
    /// Remove build records.
    #[command(alias = "remove")]
    Rm {
        /// Remove every record.
        #[arg(short, long, conflicts_with = "ids")]
        all: bool,
        /// Record ids (or unique prefixes).
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
    },
}

/// `kiln volume ...`.
#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// Create a volume (anonymous, with a random name, if NAME is not given).
    Create {
        /// Set metadata (`KEY=VALUE`); repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Volume name.
        name: Option<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only display volume names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Display detailed information on one or more volumes.
    Inspect {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more volumes (never one a container uses).
    #[command(alias = "remove")]
    Rm {
        /// Do not fail for a volume that does not exist.
        #[arg(short, long)]
        force: bool,
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove unused anonymous volumes (all unused volumes with -a).
    Prune {
        /// Remove all unused volumes, not just anonymous ones.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

/// `kiln system ...`.
#[derive(Subcommand, Debug)]
enum SystemCommand {
    /// Show what images, containers, volumes and the build cache take in the store.
    Df {
        /// Show detailed information on space usage.
        #[arg(short, long)]
        verbose: bool,
    },
}

/// `kiln image ...`.
#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// List images (`kiln images`).
    #[command(visible_alias = "list")]
    Ls(ImagesArgs),
    /// Show images' configuration as JSON.
    Inspect {
        /// Image names or ids (prefixes).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more images (`kiln rmi`).
    #[command(visible_alias = "remove")]
    Rm(RmiArgs),
    /// Show the history of an image (`kiln history`).
    History(HistoryArgs),
    /// Remove unused images (kiln keeps no dangling ones: use -a).
    Prune {
        /// Remove all images not used by a container.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ContainerCommand {
    /// Remove all stopped containers.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ImagesArgs {
    /// Only the images of this repository (and tag); `*`, `?` and `[...]` match
    /// as in Docker's reference filter (`kiln images 'app*'`).
    #[arg(value_name = "REPOSITORY[:TAG]")]
    reference: Option<String>,
    /// Only show image ids.
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate ids.
    #[arg(long)]
    no_trunc: bool,
    /// Format output using a Go template (Docker's fields: `{{.Repository}}`,
    /// `{{.Tag}}`, `{{.ID}}`, `{{.CreatedSince}}`, `{{.CreatedAt}}`, `{{.Size}}`,
    /// `{{.Digest}}`); `table TEMPLATE` adds headers and aligns columns, `json`
    /// prints each image as JSON.
    #[arg(long)]
    format: Option<String>,
}

#[derive(clap::Args, Debug)]
struct RmiArgs {
    /// Remove even if a container uses the image (it is untagged only).
    #[arg(short, long)]
    force: bool,
    /// Image names or ids.
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct HistoryArgs {
    /// Print sizes and dates in human readable format.
    #[arg(short = 'H', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    human: bool,
    /// Don't truncate output.
    #[arg(long)]
    no_trunc: bool,
    /// Only show image ids.
    #[arg(short, long)]
    quiet: bool,
    /// Format output using a template: {{.ID}} {{.CreatedBy}} {{.CreatedAt}} {{.CreatedSince}} {{.Size}} {{.Comment}}.
    #[arg(long)]
    format: Option<String>,
    /// Image name or id.
    image: String,
}

#[derive(clap::Args, Debug)]
struct BuildArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Name and optionally a tag (`name:tag`); repeatable.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Set a build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Build this stage and the stages it needs.
    #[arg(long)]
    target: Option<String>,
    /// Target platform (`linux/amd64`).
    #[arg(long)]
    platform: Option<String>,
    /// Do not use the cache.
    #[arg(long)]
    no_cache: bool,
    /// Progress output.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Write the cache-hit report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Output: `type=oci,dest=DIR|FILE.tar`, `type=docker,dest=FILE.tar`,
    /// `type=local,dest=DIR`; repeatable.
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// Layer compression.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd", "uncompressed"])]
    compression: String,
    /// Compression level (gzip 0-9, zstd 1-22).
    #[arg(long)]
    compression_level: Option<i32>,
    /// A secret for `RUN --mount=type=secret`: `id=NAME,src=FILE` or `id=NAME,env=VAR`;
    /// repeatable. Secrets never reach a layer, a cache key or the history.
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// A named context (buildx): `NAME=DIR`, `NAME=docker-image://REF`,
    /// `NAME=oci-layout://DIR[:TAG]`, a git repository (`NAME=https://host/repo.git#ref`,
    /// `NAME=git@host:repo.git`) or an http(s) file (as `/context`), used for `FROM
    /// NAME`, `COPY --from=NAME`, `RUN --mount=from=NAME` and in place of a stage named
    /// NAME; repeatable.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
    /// An SSH agent for `RUN --mount=type=ssh` (and `ADD git@...`): `default` (or `ID`)
    /// for `$SSH_AUTH_SOCK`, `ID=SOCKET`, or `ID=KEYFILE[,KEYFILE...]` (private keys,
    /// served by an ssh-agent kiln runs for the build); repeatable.
    #[arg(long = "ssh", value_name = "default|ID=SOCKET|ID=KEYFILE[,...]")]
    ssh: Vec<String>,
    /// How RUN steps get their filesystem: `overlay` (default where the kernel has it) or
    /// `copy` (a full copy per step, for machines without overlayfs).
    #[arg(long, value_enum)]
    snapshotter: Option<kiln_sandbox::SnapshotterKind>,
    /// Pull base images from their registries even when the store has them.
    #[arg(long)]
    pull: bool,
    /// Push every `-t` name to its registry after the build.
    #[arg(long)]
    push: bool,
    /// Grant an entitlement, as buildx does: `security.insecure` lets `RUN
    /// --security=insecure` run with every privilege (no seccomp, all capabilities);
    /// `network.host` allows `--network host`; repeatable.
    #[arg(long = "allow", value_parser = ["security.insecure", "network.host"])]
    allow: Vec<String>,
    /// Write no build record (also `KILN_NO_RECORD=1`); misses are still explained.
    #[arg(long)]
    no_record: bool,
    /// Explain cache misses against this record (`kiln builds inspect --format json`,
    /// e.g. from another machine) instead of this store's records.
    #[arg(long, value_name = "RECORD.json")]
    explain_against: Option<PathBuf>,
    /// Export the build cache: `type=registry,ref=IMAGE[,mode=min|max][,ignore-error=true]
    /// [,max-records=N]` or `type=local,dest=DIR[,...]`; repeatable. Merged with what
    /// is there.
    #[arg(long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    /// Use a build cache: `type=registry,ref=IMAGE` or `type=local,src=DIR`; repeatable
    /// (looked in in order).
    #[arg(long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// Run the frontend only (parse, check, expand, plan) and print the plan.
    #[arg(long)]
    dry_run: bool,
    /// Format of the --dry-run plan.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    format: PlanFormat,
    /// Suppress the build output and print the image ID (`sha256:<config digest>`) on
    /// success, as `docker build -q`.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Write the image ID (`sha256:<config digest>`) to this file.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write the build result metadata as JSON to this file (buildx's keys:
    /// `containerimage.digest`, `containerimage.config.digest`, `containerimage.descriptor`,
    /// `image.name`, and kiln's `kiln.cache`).
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Set metadata for the image (`KEY=VALUE`); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Add a custom host-to-IP mapping to RUN steps' /etc/hosts (`HOST:IP`); repeatable.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    add_hosts: Vec<String>,
    /// Size of RUN steps' /dev/shm (`64m`, `1g`, or bytes; default 64m).
    #[arg(long, value_name = "SIZE", value_parser = parse_shm_size)]
    shm_size: Option<u64>,
    /// The network of RUN steps without `--network`: `default` (kiln's: the host's
    /// network), `none` (loopback only), or `host` (needs `--allow network.host`).
    #[arg(long, value_parser = ["default", "none", "host"])]
    network: Option<String>,
    /// Write the build's timeline as Chrome trace events (JSON) to this file; open it in
    /// Perfetto or chrome://tracing.
    #[arg(long, value_name = "FILE.json")]
    trace: Option<PathBuf>,
    /// The build context directory.
    context: PathBuf,
}

/// `--shm-size`: Docker's `RAMInBytes`: a number with an optional binary unit (`b`, `k`,
/// `m`, `g`, `t`, `p`, optionally followed by `b` or `ib`), case-insensitive; above zero.
fn parse_shm_size(s: &str) -> std::result::Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use e.g. 64m, 1g or a number of bytes");
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let shift = match unit {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * (1u64 << shift) as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// `--add-host HOST:IP` (or `HOST=IP`; an IPv6 address may be in brackets).
fn parse_add_host(s: &str) -> Result<kiln_ops::ExtraHost> {
    let (host, ip) = s
        .split_once('=')
        .or_else(|| s.split_once(':'))
        .filter(|(h, i)| !h.is_empty() && !i.is_empty())
        .ok_or_else(|| anyhow::anyhow!("invalid --add-host {s:?}: expected HOST:IP"))?;
    if ip == "host-gateway" {
        bail!(
            "invalid --add-host {s:?}: kiln has no host gateway (RUN steps use the host's \
             network, where the host is 127.0.0.1): give an IP address"
        );
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip = ip
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid --add-host {s:?}: {ip:?} is not an IP address"))?;
    Ok(kiln_ops::ExtraHost {
        host: host.to_string(),
        ip,
    })
}

/// `--label KEY=VALUE` (`KEY` alone: an empty value, as Docker).
fn parse_labels(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in raw {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        if k.is_empty() {
            bail!("invalid --label {l:?}: the key is empty");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `--network`: the RUN default, with buildx's entitlement rule for `host`.
fn parse_network(args: &BuildArgs) -> Result<Option<kiln_ops::Network>> {
    match args.network.as_deref() {
        None | Some("default") => Ok(None),
        Some("none") => Ok(Some(kiln_ops::Network::None)),
        Some("host") => {
            if !args.allow.iter().any(|a| a == "network.host") {
                bail!(
                    "--network host needs the network.host entitlement: pass --allow network.host"
                );
            }
            Ok(Some(kiln_ops::Network::Host))
        }
        Some(other) => bail!("invalid --network {other:?}: expected default, none or host"),
    }
}

/// buildx's `--metadata-file` object for a built image, with kiln's cache summary.
fn build_metadata(
    outcome: &kiln_builder::build::BuildOutcome,
    tags: &[String],
) -> serde_json::Value {
    let image = &outcome.report.image;
    let t = &outcome.report.totals;
    serde_json::json!({
        "containerimage.digest": image.digest,
        "containerimage.config.digest": image.config,
        "containerimage.descriptor": {
            "mediaType": outcome.manifest_media_type,
            "digest": image.digest,
            "size": outcome.manifest_size,
        },
        "image.name": tags.join(","),
        "kiln.cache": { "steps": t.steps, "cached": t.cached, "missed": t.built },
    })
}

/// How `--dry-run` prints the plan.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PlanFormat {
    /// Stages, vertices, dependencies and parallel levels.
    Text,
    /// A Graphviz graph.
    Dot,
}

/// `--network-timeout`: `500ms`, `30s`, `2m`, `1h`, or a number of seconds; above zero.
fn parse_timeout(s: &str) -> std::result::Result<std::time::Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("invalid duration {s:?}: use e.g. 30s, 2m or 500ms")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 30s, 2m or 500ms"))?;
    let d = std::time::Duration::try_from_secs_f64(n * scale)
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be above zero"));
    }
    Ok(d)
}

/// Runs the CLI.
pub fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    let root = match cli.root.clone() {
        Some(r) => r,
        None => kiln_cache::Store::default_root()?,
    };
    let registry = kiln_builder::remote::RegistrySettings {
        insecure: cli.insecure_registries.clone(),
        ca_file: cli.registry_ca.clone(),
        always_pull: false,
        timeouts: kiln_registry::net::Timeouts::new(cli.network_timeout),
    };
    match cli.command {
        Command::Parse { dump: _, file } => parse_cmd(&file),
        Command::Build(args) => build_cmd(&args, &root, registry),
        Command::Pull {
            platform,
            quiet,
            reference,
        } => {
            let platform = match platform {
                Some(p) => Platform::parse(&p).map_err(anyhow::Error::msg)?,
                None => Platform::host(),
            };
            crate::commands::pull(&root, registry, &reference, &platform, quiet)
        }
        Command::Push {
            media_types,
            quiet,
            name,
        } => crate::commands::push(&root, registry, &name, media_types == "docker", quiet),
        Command::Tag { source, target } => crate::commands::tag(&root, &source, &target),
        Command::Login {
            username,
            password,
            password_stdin,
            server,
        } => crate::commands::login(registry, &server, username, password, password_stdin),
        Command::Logout { server } => crate::commands::logout(&server),
        Command::Volume(v) => match v {
            VolumeCommand::Create { labels, name } => {
                crate::storage_cmds::volume_create(&root, name.as_deref(), &labels)
            }
            VolumeCommand::Ls { quiet } => crate::storage_cmds::volume_ls(&root, quiet),
            VolumeCommand::Inspect { names } => crate::storage_cmds::volume_inspect(&root, &names),
            VolumeCommand::Rm { force, names } => {
                crate::storage_cmds::volume_rm(&root, force, &names)
            }
            VolumeCommand::Prune { all, force } => {
                crate::storage_cmds::volume_prune(&root, force, all)
            }
        },
        Command::Diff { container } => crate::storage_cmds::diff(&root, &container),
        Command::Commit {
            change,
            message,
            author,
            container,
            name,
        } => crate::storage_cmds::commit_cmd(
            &root,
            &container,
            name.as_deref(),
            crate::storage_cmds::CommitFlags {
                changes: change,
                message,
                author,
            },
        ),
        Command::System(SystemCommand::Df { verbose }) => {
            crate::storage_cmds::system_df(&root, verbose)
        }
        Command::Rmi(r) | Command::Image(ImageCommand::Rm(r)) => {
            crate::storage_cmds::rmi(&root, r.force, &r.images)
        }
        Command::Image(ImageCommand::Inspect { names }) => {
            crate::commands::inspect_images(&root, &names)
        }
        Command::Du { verbose } => crate::storage_cmds::du(&root, verbose),
        Command::Prune {
            all,
            filters,
            max_used_space,
            min_free_space,
            reserved_space,
            dry_run,
            verbose,
            force,
        } => crate::storage_cmds::prune(
            &root,
            crate::storage_cmds::PruneFlags {
                all,
                filters,
                max_used_space,
                min_free_space,
                reserved_space,
                dry_run,
                verbose,
                force,
            },
        ),
        Command::Image(ImageCommand::Prune { all, force }) => {
            crate::storage_cmds::image_prune(&root, all, force)
        }
        Command::Images(i) | Command::Image(ImageCommand::Ls(i)) => crate::commands::images(
            &root,
            i.reference.as_deref(),
            i.quiet,
            i.no_trunc,
            i.format.as_deref(),
        ),
        Command::Inspect { names } => containers(crate::container_commands::inspect(&root, &names)),
        Command::Run(args) => containers(crate::container_commands::run(&root, registry, &args)),
        Command::Ps {
            all,
            quiet,
            no_trunc,
            size,
            format,
        } => containers(crate::container_commands::ps(
            &root,
            &crate::container_commands::PsFlags {
                all,
                quiet,
                no_trunc,
                size,
                format,
            },
        )),
        Command::Start {
            attach,
            containers: names,
        } => containers(crate::container_commands::start(&root, attach, &names)),
        Command::Stop {
            time,
            containers: names,
        } => containers(crate::container_commands::stop(&root, time, &names)),
        Command::Kill {
            signal,
            containers: names,
        } => containers(crate::container_commands::kill(&root, &signal, &names)),
        Command::Logs { follow, container } => {
            containers(crate::container_commands::logs(&root, follow, &container))
        }
        Command::Exec(args) => containers(crate::container_commands::exec(&root, &args)),
        Command::Rm {
            force,
            volumes,
            containers: names,
        } => containers(crate::container_commands::rm(&root, force, volumes, &names)),
        Command::Container(ContainerCommand::Prune { force }) => {
            containers(crate::container_commands::prune(&root, force))
        }
        Command::Builds(b) => match b {
            BuildsCommand::Ls { quiet } => crate::builds_cmd::ls(&root, quiet),
            BuildsCommand::Inspect { format, id } => {
                crate::builds_cmd::inspect(&root, &id, format == "json")
            }
            BuildsCommand::Rm { all, ids } => crate::builds_cmd::rm(&root, &ids, all),
        },
        Command::Save {
            output,
            format,
            images,
        } => crate::commands::save(&root, registry, output.as_deref(), &format, &images),
        Command::Load { input, quiet } => crate::commands::load(&root, input.as_deref(), quiet),
        Command::Completion { shell } => {
            let shell = match shell.as_str() {
                "bash" => clap_complete::Shell::Bash,
                "zsh" => clap_complete::Shell::Zsh,
                _ => clap_complete::Shell::Fish,
            };
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics on a failed write (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "kiln", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::History(h) | Command::Image(ImageCommand::History(h)) => crate::commands::history(
            &root,
            &h.image,
            crate::commands::HistoryFlags {
                human: h.human,
                no_trunc: h.no_trunc,
                quiet: h.quiet,
                format: h.format.clone(),
            },
        ),
    }
}

/// The container commands fail with Docker's 125 (or the runtime's 126, 127).
fn containers(r: Result<ExitCode>) -> Result<ExitCode> {
    Ok(r.unwrap_or_else(crate::container_commands::fail))
}

fn read_source(file: &Path) -> Result<String> {
    let bytes = if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Prints a Dockerfile error as `FILE:LINE:COL: message` with the source excerpt.
fn report(file: &Path, source: &str, err: &Diagnostic) -> ExitCode {
    eprintln!("{}", err.render(&file.display().to_string(), source));
    ExitCode::FAILURE
}

fn parse_cmd(file: &Path) -> Result<ExitCode> {
    let source = read_source(file)?;
    match parser::parse(&source) {
        Ok(ast) => {
            for w in &ast.warnings {
                eprintln!(
                    "warning: {}:{}: {}",
                    file.display(),
                    w.range.start.line,
                    w.message
                );
            }
            println!("{}", ast.dump());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(file, &source, &e)),
    }
}

fn parse_build_args(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in raw {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => bail!("invalid --build-arg {a:?}: the name is empty"),
            None => {
                // Docker: `--build-arg NAME` takes the value from the environment, and is
                // ignored when the variable is not set.
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

fn build_cmd(
    args: &BuildArgs,
    root: &Path,
    mut registry: kiln_builder::remote::RegistrySettings,
) -> Result<ExitCode> {
    registry.always_pull = args.pull;
    // As Docker: a bad `-t` fails the command before anything else, with its message.
    for tag in &args.tags {
        kiln_builder::remote::parse_name(tag).map_err(|reason| {
            anyhow::anyhow!("invalid argument {tag:?} for \"-t, --tag\" flag: {reason}")
        })?;
    }
    let context = &args.context;
    if !context.is_dir() {
        bail!("build context {} is not a directory", context.display());
    }
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let shown = args
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from("Dockerfile"));
    let source = read_source(&file)?;
    let (ast, df) = match kiln_frontend::load(&source) {
        Ok(v) => v,
        Err(e) => return Ok(report(&shown, &source, &e)),
    };
    for w in &ast.warnings {
        eprintln!(
            "warning: {}:{}: {}",
            shown.display(),
            w.range.start.line,
            w.message
        );
    }
    let excludes = match dockerignore::load_for(context, &file)
        .with_context(|| format!("reading .dockerignore for {}", context.display()))?
    {
        Some((_, patterns)) => patterns,
        None => Vec::new(),
    };
    // `--platform a,b`: the first for the conversion here (dry runs); `real_build`
    // builds each.
    let target_platform =
        kiln_builder::multiplatform::parse_platforms(args.platform.as_deref())?.swap_remove(0);
    let opts = ConvertOptions {
        build_args: parse_build_args(&args.build_args)?,
        target: args.target.clone(),
        target_platform,
        build_platform: Platform::host(),
        context_excludes: excludes,
        run_network: parse_network(args)?,
        extra_hosts: args
            .add_hosts
            .iter()
            .map(|h| parse_add_host(h))
            .collect::<Result<_>>()?,
        shm_size: args.shm_size,
        named_contexts: Default::default(),
    };
    let named = args
        .build_contexts
        .iter()
        .map(|s| kiln_builder::build::ContextSource::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if !args.dry_run {
        return real_build(args, root, &file, &shown, opts, named, registry);
    }
    let (opts, _) = kiln_builder::build::with_named_contexts(opts, &named)?;
    let plan = match convert::convert(&df, &opts, &NoResolver) {
        Ok(p) => p,
        Err(e) => return Ok(report(&shown, &source, &e)),
    };
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    match args.format {
        PlanFormat::Text => print!(
            "{}",
            kiln_builder::plan::render(&plan, &df, &shown.display().to_string())
        ),
        PlanFormat::Dot => print!("{}", plan.graph.to_dot()),
    }
    Ok(ExitCode::SUCCESS)
}

fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        _ => Ok(None),
    }
}

fn real_build(
    args: &BuildArgs,
    root: &Path,
    file: &Path,
    shown: &Path,
    opts: ConvertOptions,
    named_contexts: Vec<(String, kiln_builder::build::ContextSource)>,
    registry: kiln_builder::remote::RegistrySettings,
) -> Result<ExitCode> {
    let outputs = args
        .outputs
        .iter()
        .map(|o| OutputSpec::parse(o))
        .collect::<Result<Vec<_>, _>>()?;
    let mut secret_files = Vec::new();
    let req = BuildRequest {
        root: root.to_path_buf(),
        context: args.context.clone(),
        dockerfile: file.to_path_buf(),
        dockerfile_name: shown.display().to_string(),
        tags: args.tags.clone(),
        build_args: opts.build_args,
        target: opts.target,
        platform: opts.target_platform,
        no_cache: args.no_cache,
        progress: if args.quiet {
            ProgressMode::Quiet
        } else {
            args.progress
        },
        outputs,
        compression: Compression::parse(&args.compression, args.compression_level)
            .map_err(anyhow::Error::msg)?,
        source_date_epoch: source_date_epoch()?,
        secrets: parse_secrets(&args.secrets, &mut secret_files)?,
        snapshotter: args.snapshotter,
        registry,
        push: args.push,
        allow_insecure: args.allow.iter().any(|a| a == "security.insecure"),
        record: !args.no_record
            && std::env::var("KILN_NO_RECORD").map_or(true, |v| v.is_empty() || v == "0"),
        explain_against: args.explain_against.clone(),
        cache_to: args
            .cache_to
            .iter()
            .map(|s| CacheToSpec::parse(s))
            .collect::<Result<_, _>>()?,
        cache_from: args
            .cache_from
            .iter()
            .map(|s| parse_cache_from(s))
            .collect::<Result<_, _>>()?,
        labels: parse_labels(&args.labels)?,
        run_network: opts.run_network,
        extra_hosts: opts.extra_hosts,
        shm_size: opts.shm_size,
        trace: args.trace.clone(),
        named_contexts,
        ssh: args
            .ssh
            .iter()
            .map(|s| {
                kiln_builder::build::parse_ssh(s, std::env::var("SSH_AUTH_SOCK").ok().as_deref())
            })
            .collect::<Result<_, _>>()?,
        multi_platform: false,
    };
    kiln_builder::interrupt::install();
    // RUN steps block a worker thread while their process runs: keep enough threads for
    // independent stages to run side by side even on a small machine.
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get().max(4));
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    let platforms = kiln_builder::multiplatform::parse_platforms(args.platform.as_deref())?;
    if platforms.len() > 1 {
        return multi_platform_build(args, &req, &platforms);
    }
    match build(&req) {
        Ok(outcome) => {
            if let Some(path) = &args.report {
                let json = serde_json::to_vec_pretty(&outcome.report)?;
                std::fs::write(path, json)
                    .with_context(|| format!("writing the report to {}", path.display()))?;
            }
            let image_id = outcome.report.image.config.to_string();
            if let Some(path) = &args.iidfile {
                std::fs::write(path, &image_id)
                    .with_context(|| format!("writing the image ID to {}", path.display()))?;
            }
            if let Some(path) = &args.metadata_file {
                let json = serde_json::to_vec_pretty(&build_metadata(&outcome, &args.tags))?;
                std::fs::write(path, json)
                    .with_context(|| format!("writing the metadata to {}", path.display()))?;
            }
            if args.progress != ProgressMode::Quiet && !args.quiet {
                eprintln!("{}", outcome.report.summary());
                for m in outcome.report.misses() {
                    eprintln!("  {m}");
                }
            }
            // The image ID, as `docker build -q` prints it (and as `kiln images` shows it).
            println!("{image_id}");
            Ok(ExitCode::SUCCESS)
        }
        Err(BuildError::Dockerfile(d)) => {
            eprintln!("{}", d.rendered);
            Ok(ExitCode::FAILURE)
        }
        Err(e) if kiln_builder::interrupt::interrupted() => {
            eprintln!("error: interrupted: {:#}", anyhow::Error::from(e));
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e.into()),
    }
}

/// `--platform a,b`: one build per platform, then the image index the tags name. Prints
/// the index digest (the image's ID, as Docker's containerd store shows a
/// multi-platform image's), which `--iidfile` gets too.
fn multi_platform_build(
    args: &BuildArgs,
    req: &BuildRequest,
    platforms: &[Platform],
) -> Result<ExitCode> {
    let m = match kiln_builder::multiplatform::build_platforms(req, platforms) {
        Ok(m) => m,
        Err(BuildError::Dockerfile(d)) => {
            eprintln!("{}", d.rendered);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let quiet = args.progress == ProgressMode::Quiet || args.quiet;
    if !quiet {
        for (p, o) in &m.platforms {
            eprintln!("{p}: {}", o.report.summary());
        }
        eprintln!("exporting manifest list {} done", m.index_digest);
        for t in &args.tags {
            eprintln!("naming to {} done", kiln_builder::images::normalize_tag(t));
        }
    }
    if let Some(path) = &args.iidfile {
        std::fs::write(path, m.index_digest.as_str())
            .with_context(|| format!("writing the image ID to {}", path.display()))?;
    }
    if let Some(path) = &args.metadata_file {
        let json = serde_json::json!({
            "containerimage.digest": m.index_digest,
            "containerimage.descriptor": {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": m.index_digest,
                "size": m.index_size,
            },
            "image.name": args.tags.join(","),
            "kiln.cache": {
                "steps": m.platforms.iter().map(|(_, o)| o.report.totals.steps).sum::<usize>(),
                "cached": m.platforms.iter().map(|(_, o)| o.report.totals.cached).sum::<usize>(),
                "missed": m.platforms.iter().map(|(_, o)| o.report.totals.built).sum::<usize>(),
            },
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing the metadata to {}", path.display()))?;
    }
    println!("{}", m.index_digest);
    Ok(ExitCode::SUCCESS)
}

/// Parses `--secret id=NAME,src=FILE|env=VAR`. Secrets from the environment are written
/// to private temporary files (kept in `hold` for the build's duration).
fn parse_secrets(
    specs: &[String],
    hold: &mut Vec<tempfile::NamedTempFile>,
) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for spec in specs {
        let mut id = None;
        let mut src = None;
        let mut env = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
                Some(("env", v)) => env = Some(v.to_string()),
                Some(("type", "file" | "env")) => {}
                _ => {
                    bail!("invalid --secret {spec:?}: expected id=NAME,src=FILE or id=NAME,env=VAR")
                }
            }
        }
        let id = id
            .or_else(|| env.clone())
            .ok_or_else(|| anyhow::anyhow!("--secret {spec:?} has no id"))?;
        let path = match src {
            Some(p) => {
                if !p.is_file() {
                    bail!("--secret {id}: {} is not a file", p.display());
                }
                p
            }
            None => {
                let value = match &env {
                    Some(var) => std::env::var(var).with_context(|| {
                        format!("--secret {id}: environment variable {var} is not set")
                    })?,
                    // Docker's default: an environment variable named like the id.
                    None => std::env::var(&id)
                        .with_context(|| format!("--secret {id}: give src=FILE or env=VAR"))?,
                };
                let mut f = tempfile::NamedTempFile::new()?;
                std::io::Write::write_all(&mut f, value.as_bytes())?;
                let p = f.path().to_path_buf();
                hold.push(f);
                p
            }
        };
        out.push((id, path));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn network_timeouts_parse() {
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "0", "0s", "-1s", "10x", "s", "1e9h"] {
            let e = parse_timeout(bad).unwrap_err();
            assert!(e.starts_with("invalid duration"), "{bad}: {e}");
        }
    }
}
