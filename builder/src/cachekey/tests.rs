//! The invariants of cache keys: what counts, what never does.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use filetime::FileTime;
use kiln_cache::Store;
use kiln_fs::ContextFs;
use kiln_ops::{ExecMount, ExecOp, FileOp, MountKind, Network};

use super::*;
use crate::worker::MAIN_CONTEXT as MAIN;

fn entry(path: &str) -> TreeEntry {
    TreeEntry {
        path: path.into(),
        kind: FileKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: 1,
        link_target: None,
        xattrs: vec![],
        content: Some(blake3::hash(path.as_bytes())),
    }
}

/// The encoding is pinned: changing it silently invalidates every cache in the field.
#[test]
fn tree_digest_known_answer_and_order() {
    let mut entries = vec![
        TreeEntry {
            size: 5,
            content: Some(blake3::hash(b"hello")),
            ..entry("a/file")
        },
        TreeEntry {
            kind: FileKind::Dir,
            mode: 0o755,
            size: 0,
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
            content: None,
            ..entry("a")
        },
        TreeEntry {
            kind: FileKind::Symlink,
            mode: 0o777,
            uid: 1,
            gid: 2,
            size: 0,
            link_target: Some("a/file".into()),
            content: None,
            ..entry("l")
        },
    ];
    let want = "sha256:eb5921574af8ff96ce6727f2f5382842c2cfb1a5f9dc708c39c0559407aaf7c0";
    assert_eq!(TreeDigest::of(&entries), want);
    entries.reverse();
    assert_eq!(TreeDigest::of(&entries), want, "order does not matter");
}

#[test]
fn tree_digest_counts_every_field() {
    let base = vec![entry("a"), entry("b")];
    let d = TreeDigest::of(&base);
    type Change = fn(&mut TreeEntry);
    let changed: Vec<(&str, Change)> = vec![
        ("path", |e| e.path = "c".into()),
        ("kind", |e| e.kind = FileKind::Fifo),
        ("mode", |e| e.mode = 0o755),
        ("setuid", |e| e.mode |= 0o4000),
        ("uid", |e| e.uid = 1000),
        ("gid", |e| e.gid = 1000),
        ("size", |e| e.size = 2),
        ("link target", |e| e.link_target = Some("x".into())),
        ("xattrs", |e| {
            e.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())]
        }),
        ("content", |e| e.content = Some(blake3::hash(b"other"))),
    ];
    for (what, change) in changed {
        let mut t = base.clone();
        change(&mut t[1]);
        assert_ne!(TreeDigest::of(&t), d, "{what} must count");
    }
    assert_ne!(
        TreeDigest::of(&base[..1]),
        d,
        "an entry more or less counts"
    );
    // Length prefixes keep ("ab", "") and ("a", "b")-style splits apart.
    let l1 = TreeEntry {
        link_target: Some("".into()),
        ..entry("ab")
    };
    let l2 = TreeEntry {
        link_target: Some("b".into()),
        content: l1.content,
        ..entry("a")
    };
    assert_ne!(TreeDigest::of(&[l1]), TreeDigest::of(&[l2]));
}

/// A build context on disk, and its checksum as COPY sees it.
struct Ctx {
    dir: tempfile::TempDir,
    ignore: Vec<String>,
}

impl Ctx {
    fn new() -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path();
        fs::create_dir_all(c.join("src/deep")).unwrap();
        fs::write(c.join("src/main.rs"), "fn main() {}\n").unwrap();
        fs::write(c.join("src/deep/lib.rs"), "pub fn f() {}\n").unwrap();
        fs::write(c.join(".hidden"), "dot").unwrap();
        symlink("src/main.rs", c.join("link")).unwrap();
        Ctx {
            dir,
            ignore: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn fs(&self) -> ContextFs {
        ContextFs::new(self.dir.path(), &self.ignore).unwrap()
    }

    /// The checksum of `COPY . /`.
    fn sum(&self) -> Digest {
        context_checksum(&self.fs(), None, &["."]).unwrap()
    }
}

fn set_times(path: &Path, secs: i64) {
    let t = FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

#[test]
fn mtime_and_atime_are_ignored() {
    let c = Ctx::new();
    let before = c.sum();
    for p in ["src/main.rs", "src", "link", ""] {
        set_times(&c.path(p), 1_000_000_000);
        assert_eq!(c.sum(), before, "times of {p:?}");
    }
    // Rewriting a file with the same bytes is a no-op too.
    fs::write(c.path("src/main.rs"), "fn main() {}\n").unwrap();
    assert_eq!(c.sum(), before);
}

#[test]
fn content_counts() {
    let c = Ctx::new();
    let before = c.sum();
    fs::write(c.path("src/main.rs"), "fn main() {}\r").unwrap();
    assert_ne!(c.sum(), before, "same size, other bytes");
    fs::write(c.path("src/main.rs"), "fn main() {}\n").unwrap();
    assert_eq!(c.sum(), before);
    fs::write(c.path(".hidden"), "DOT").unwrap();
    assert_ne!(c.sum(), before, "dotfiles count");
}

#[test]
fn mode_counts_for_files_and_directories() {
    let c = Ctx::new();
    let before = c.sum();
    let set = |p: &str, mode| fs::set_permissions(c.path(p), fs::Permissions::from_mode(mode));
    set("src/main.rs", 0o755).unwrap();
    assert_ne!(c.sum(), before);
    set("src/main.rs", 0o644).unwrap();
    assert_eq!(c.sum(), before);
    set("src", 0o700).unwrap();
    assert_ne!(c.sum(), before, "directory modes count");
}

#[test]
fn file_type_counts() {
    let c = Ctx::new();
    let p = c.path("thing");
    let mut seen = vec![c.sum()];
    fs::write(&p, "").unwrap();
    seen.push(c.sum());
    fs::remove_file(&p).unwrap();
    fs::create_dir(&p).unwrap();
    seen.push(c.sum());
    fs::remove_dir(&p).unwrap();
    symlink("nowhere", &p).unwrap();
    seen.push(c.sum());
    fs::remove_file(&p).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    seen.push(c.sum());
    fs::remove_file(&p).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    seen.push(c.sum());
    drop(sock);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        seen.len(),
        "none, file, dir, symlink, fifo, socket"
    );
}

#[test]
fn link_target_counts() {
    let c = Ctx::new();
    let before = c.sum();
    fs::remove_file(c.path("link")).unwrap();
    symlink("src/deep/lib.rs", c.path("link")).unwrap();
    assert_ne!(c.sum(), before);
}

#[test]
fn xattrs_count_on_files_and_directories() {
    let c = Ctx::new();
    let before = c.sum();
    xattr::set(c.path("src/main.rs"), "user.kiln.test", b"1").unwrap();
    let file = c.sum();
    assert_ne!(file, before);
    xattr::set(c.path("src/main.rs"), "user.kiln.test", b"2").unwrap();
    assert_ne!(c.sum(), file, "the value counts");
    xattr::remove(c.path("src/main.rs"), "user.kiln.test").unwrap();
    assert_eq!(c.sum(), before);
    xattr::set(c.path("src"), "user.kiln.test", b"1").unwrap();
    assert_ne!(c.sum(), before);
}

#[test]
fn dockerignored_files_are_ignored() {
    let mut c = Ctx::new();
    fs::create_dir(c.path("logs")).unwrap();
    fs::write(c.path("logs/a.log"), "log").unwrap();
    fs::write(c.path("logs/keep.log"), "keep").unwrap();
    fs::create_dir(c.path("node_modules")).unwrap();
    fs::write(c.path("node_modules/x.js"), "x").unwrap();
    c.ignore = ["node_modules", "logs/*.log", "!logs/keep.log"]
        .map(String::from)
        .to_vec();
    let before = c.sum();
    fs::write(c.path("node_modules/x.js"), "changed").unwrap();
    fs::write(c.path("node_modules/new.js"), "new").unwrap();
    fs::write(c.path("logs/a.log"), "more log").unwrap();
    fs::write(c.path("logs/b.log"), "new log").unwrap();
    assert_eq!(c.sum(), before);
    // ...while a file re-included by an exception counts.
    fs::write(c.path("logs/keep.log"), "KEEP").unwrap();
    assert_ne!(c.sum(), before);
    // And a selection names what it selects: `COPY src` is not `COPY .`.
    let fs = c.fs();
    assert_ne!(context_checksum(&fs, None, &["src"]).unwrap(), c.sum());
}

/// The context's owners are not kept (COPY gives 0:0, as BuildKit's file sync resets
/// them), so they are not counted; a source that keeps owners counts them.
#[test]
fn owners_count_when_the_source_keeps_them() {
    struct Owned(ContextFs);
    impl SourceFs for Owned {
        fn lstat(&self, rel: &str) -> Option<Entry> {
            self.0.lstat(rel)
        }
        fn list(&self, rel: &str) -> Vec<String> {
            self.0.list(rel)
        }
        fn keeps_owners(&self) -> bool {
            true
        }
        fn describe(&self) -> String {
            "an image".into()
        }
    }
    if !rustix::process::geteuid().is_root() {
        let why = "owners_count_when_the_source_keeps_them needs root (to chown)";
        assert!(std::env::var_os("CI").is_none_or(|v| v.is_empty()), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let c = Ctx::new();
    let owned = |c: &Ctx| context_checksum(&Owned(c.fs()), None, &["."]).unwrap();
    let (ctx_before, owned_before) = (c.sum(), owned(&c));
    for (uid, gid) in [(Some(1000), None), (None, Some(1000))] {
        std::os::unix::fs::lchown(c.path("src/main.rs"), uid, gid).unwrap();
        assert_eq!(c.sum(), ctx_before, "context owners {uid:?}:{gid:?}");
        assert_ne!(owned(&c), owned_before, "owners {uid:?}:{gid:?}");
        std::os::unix::fs::lchown(c.path("src/main.rs"), Some(0), Some(0)).unwrap();
    }
}

#[test]
fn the_stat_memo_gives_the_same_key() {
    let c = Ctx::new();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    // The memo does not trust a file whose ctime is too close to its load time, and a
    // ctime cannot be set back: the memo is loaded as if a few seconds later instead.
    let memo_sum = || {
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
        let memo = StatMemo::load_at(&store, c.dir.path(), later).unwrap();
        let sum = context_checksum(&c.fs(), Some(&memo), &["."]).unwrap();
        memo.save().unwrap();
        (sum, memo.len())
    };
    let plain = c.sum();
    assert_eq!(memo_sum(), (plain.clone(), 3));
    // Now from the memo, with no file read.
    assert_eq!(memo_sum(), (plain.clone(), 3));
    // An xattr change moves the ctime: the memo never returns a stale hash.
    xattr::set(c.path("src/main.rs"), "user.kiln.test", b"1").unwrap();
    assert_eq!(memo_sum().0, c.sum());
    assert_ne!(c.sum(), plain);
}

/// What [`Fake`] answers for a lookup: a digest of its description.
fn fake(what: &str) -> Digest {
    kiln_oci::digest::sha256_digest(what.as_bytes())
}

/// Answers [`content_key`]'s lookups (with [`fake`] digests) and records them.
#[derive(Default)]
struct Fake {
    asked: std::cell::RefCell<Vec<String>>,
}

impl KeySource for Fake {
    fn chain_id(&self, reference: &str, platform: &Platform) -> Result<Digest> {
        self.asked
            .borrow_mut()
            .push(format!("image {reference} {platform}"));
        Ok(fake(&format!("chain({reference})")))
    }
    fn download_digest(&self, url: &str) -> Result<Digest> {
        self.asked.borrow_mut().push(format!("download {url}"));
        Ok(fake(&format!("digest({url})")))
    }
    fn git_commit(&self, source: &GitSource) -> Result<String> {
        self.asked
            .borrow_mut()
            .push(format!("git {}", source.remote));
        Ok(format!("commit-of-{}", source.remote))
    }
    fn context_checksum(&self, context: &str, sources: &[&str]) -> Result<Digest> {
        // The build context keeps the words it always had; a named one says its name.
        let named = match context {
            crate::worker::MAIN_CONTEXT => String::new(),
            n => format!("{n}:"),
        };
        self.asked
            .borrow_mut()
            .push(format!("context {named}{}", sources.join(" ")));
        Ok(fake(&format!("sum({named}{})", sources.join(" "))))
    }
}

fn fs_out() -> Output {
    Output::Fs {
        layers: vec![],
        added: false,
    }
}

fn copy(input: usize, src: &str) -> FileAction {
    FileAction::Copy {
        input,
        src: src.into(),
        dest: "/".into(),
        chown: None,
        chmod: None,
        unpack: false,
        parents: false,
        exclude: vec![],
    }
}

fn download(url: &str, checksum: Option<&str>) -> FileAction {
    FileAction::Download {
        url: url.into(),
        dest: "/".into(),
        checksum: checksum.map(String::from),
        chown: None,
        chmod: None,
    }
}

fn key(op: &Op, inputs: &[Output]) -> (Option<String>, Vec<String>) {
    let fake = Fake::default();
    let k = content_key(op, inputs, &fake).unwrap();
    (k, fake.asked.into_inner())
}

#[test]
fn content_key_of_images_is_their_chain_id() {
    let op = Op::Image {
        reference: "busybox".into(),
        platform: Platform::parse("linux/amd64").unwrap(),
        digest: None,
    };
    assert_eq!(key(&op, &[]).0, Some(fake("chain(busybox)").into()));
}

#[test]
fn content_key_of_file_ops() {
    let file = |has_base, actions| Op::File(FileOp { has_base, actions });
    // COPY from the context over a base: the context's files.
    let op = file(true, vec![copy(1, "a"), copy(1, "b/*")]);
    let (k, asked) = key(&op, &[fs_out(), Output::Context(MAIN.into())]);
    assert_eq!(k, Some(fake("sum(a b/*)").into()));
    assert_eq!(asked, ["context a b/*"]);
    // COPY --from a stage: its key is an input key already.
    assert_eq!(key(&op, &[fs_out(), fs_out()]), (None, vec![]));
    // FROM scratch + COPY: input 0 is the context, not a base.
    let op = file(false, vec![copy(0, ".")]);
    assert_eq!(
        key(&op, &[Output::Context(MAIN.into())]).0,
        Some(fake("sum(.)").into())
    );
    // ADD <url>: the --checksum, without a fetch; otherwise the download's digest.
    let op = file(true, vec![download("https://x/a", Some("sha256:aa"))]);
    assert_eq!(key(&op, &[fs_out()]), (Some("sha256:aa".into()), vec![]));
    let op = file(true, vec![copy(1, "a"), download("https://x/b", None)]);
    let (k, asked) = key(&op, &[fs_out(), Output::Context(MAIN.into())]);
    let both = format!("{},{}", fake("sum(a)"), fake("digest(https://x/b)"));
    assert_eq!(k, Some(both));
    assert_eq!(asked, ["context a", "download https://x/b"]);
    // WORKDIR, heredoc files: the definition says it all.
    let op = file(
        true,
        vec![FileAction::Mkdir {
            path: "/w".into(),
            mode: 0o755,
            chown: None,
        }],
    );
    assert_eq!(key(&op, &[fs_out()]), (None, vec![]));
}

#[test]
fn content_key_of_run_is_what_context_bind_mounts_show() {
    let bind = |source: Option<&str>, input| ExecMount {
        target: "/m".into(),
        input,
        kind: MountKind::Bind {
            source: source.map(Into::into),
            readonly: true,
        },
    };
    let other = |kind| ExecMount {
        target: "/m".into(),
        input: None,
        kind,
    };
    let exec = |mounts| {
        Op::Exec(ExecOp {
            args: vec!["true".into()],
            env: vec![],
            proxy_env: vec!["HTTP_PROXY=http://p".into()],
            cwd: "/".into(),
            user: String::new(),
            network: Network::Host,
            extra_hosts: vec![],
            shm_size: None,
            platform: None,
            insecure: false,
            mounts,
        })
    };
    assert_eq!(key(&exec(vec![]), &[fs_out()]), (None, vec![]));
    let op = exec(vec![
        bind(None, Some(1)),
        bind(Some("src"), Some(1)),
        bind(Some("/"), Some(2)),
        other(MountKind::Cache {
            id: "/cache".into(),
            sharing: kiln_ops::Sharing::Shared,
            readonly: false,
            source: None,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }),
        other(MountKind::Tmpfs { size: None }),
    ]);
    let (k, asked) = key(&op, &[fs_out(), Output::Context(MAIN.into()), fs_out()]);
    assert_eq!(k, Some(fake("sum(. src)").into()));
    assert_eq!(asked, ["context . src"]);
}

#[test]
fn content_key_of_named_contexts_is_their_own_checksum() {
    let op = Op::File(FileOp {
        has_base: true,
        actions: vec![copy(1, "a"), copy(2, "b")],
    });
    let named = Output::Context("src".into());
    // Each local context is checksummed on its own, in order of name.
    let (k, asked) = key(
        &op,
        &[fs_out(), Output::Context(MAIN.into()), named.clone()],
    );
    assert_eq!(
        k,
        Some(format!("{},{}", fake("sum(a)"), fake("sum(src:b)")))
    );
    assert_eq!(asked, ["context a", "context src:b"]);
    // A named context alone: its files, never the build context's.
    let op = Op::File(FileOp {
        has_base: false,
        actions: vec![copy(0, ".")],
    });
    let (k, asked) = key(&op, &[named]);
    assert_eq!(k, Some(fake("sum(src:.)").into()));
    assert_eq!(asked, ["context src:."]);
}

#[test]
fn named_context_checksum_is_content_based() {
    // Two directories with the same files (other paths, other mtimes) give one
    // checksum; a changed byte gives another.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [a.path(), b.path()] {
        fs::write(d.join("f"), "same").unwrap();
    }
    filetime::set_file_mtime(b.path().join("f"), FileTime::from_unix_time(1, 0)).unwrap();
    let sum = |d: &Path| {
        let fs = ContextFs::new(d, &[]).unwrap();
        context_checksum(&fs, None, &["."]).unwrap()
    };
    assert_eq!(sum(a.path()), sum(b.path()));
    fs::write(b.path().join("f"), "diff").unwrap();
    assert_ne!(sum(a.path()), sum(b.path()));
}

#[test]
fn content_key_of_a_git_source_is_its_commit() {
    let op = Op::Git(GitSource {
        remote: "https://h/r.git".into(),
        reference: Some("main".into()),
        subdir: None,
        keep_git_dir: false,
        checksum: None,
    });
    let (k, asked) = key(&op, &[]);
    assert_eq!(
        k.as_deref(),
        Some("git+submodules:commit-of-https://h/r.git")
    );
    assert_eq!(asked, ["git https://h/r.git"]);
}
