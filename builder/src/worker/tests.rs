//! RUN through the worker with a recording runtime: the spec the worker gives the sandbox
//! (mounts, env, cwd, user, network) and what the Linux runtime would mount for it, checked
//! without root: nothing is run or mounted, the base is a tiny layer written to a
//! temporary store.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use kiln_cache::Store;
use kiln_frontend::convert::DEFAULT_PATH;
use kiln_frontend::convert::exec_mount;
use kiln_frontend::instructions::parse_mount;
use kiln_fs::ContextFs;
use kiln_layer::LayerOptions;
use kiln_ops::{ExecOp, Network, VertexId};
use kiln_sandbox::fake::RecordingRuntime;
use kiln_sandbox::mounts::{self, Flags, Kind};
use kiln_sandbox::{MountSpec, NetworkMode, RootSpec, SnapshotterKind, Spec};

use super::{BuildWorker, ExecSettings, Output};
use crate::images::ImageStore;

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    images: ImageStore,
    runtime: Arc<RecordingRuntime>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("ctx")).unwrap();
    fs::write(dir.path().join("token"), "s3cret\n").unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let images = ImageStore::new(&store);
    Fixture {
        dir,
        store,
        images,
        runtime: Arc::new(RecordingRuntime::new()),
    }
}

impl Fixture {
    fn worker(&self, snapshotter: SnapshotterKind) -> BuildWorker<'_> {
        let secrets = HashMap::from([("token".to_string(), self.dir.path().join("token"))]);
        let exec = ExecSettings {
            snapshotter,
            runtime: Box::new(self.runtime.clone()),
            secrets,
            allow_insecure: false,
            ssh: Default::default(),
        };
        let context = ContextFs::new(&self.dir.path().join("ctx"), &[]).unwrap();
        BuildWorker::new(
            &self.store,
            context,
            &self.images,
            LayerOptions::default(),
            exec,
        )
        .unwrap()
    }
}

/// A one-layer image with `files` (`path`, contents).
fn image(w: &BuildWorker, files: &[(&str, &str)]) -> Output {
    let dir = w.snapshots.temp_dir("layer").unwrap();
    for (path, data) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    let layer = w.commit_layer(VertexId::new(0), dir).unwrap();
    Output::Fs {
        layers: vec![layer],
        added: true,
    }
}

const BASE: &[(&str, &str)] = &[
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    ),
    ("etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\n"),
];

fn exec(mounts: &[(&str, Option<usize>)]) -> ExecOp {
    ExecOp {
        args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
        env: vec!["A=1".into()],
        proxy_env: vec!["HTTP_PROXY=http://proxy:3128".into()],
        cwd: "/work".into(),
        user: "app".into(),
        network: Network::None,
        extra_hosts: vec![],
        shm_size: None,
        platform: None,
        insecure: false,
        mounts: mounts
            .iter()
            .map(|(m, input)| exec_mount(parse_mount(m).unwrap(), *input))
            .collect(),
    }
}

/// Runs `e` over `inputs` and returns the spec the runtime got.
fn run(f: &Fixture, w: &BuildWorker, e: &ExecOp, inputs: &[Output]) -> Spec {
    let before = f.runtime.calls().len();
    w.exec_op(VertexId::new(1), e, inputs, &AtomicBool::new(false))
        .unwrap();
    let calls = f.runtime.calls();
    assert_eq!(calls.len(), before + 1);
    let call = calls.last().unwrap();
    assert_eq!(Some(call.run_dir.as_path()), call.spec.merged.parent());
    call.spec.clone()
}

fn plan_at(spec: &Spec, target: &str) -> mounts::Mount {
    let plan = mounts::plan(spec);
    let found: Vec<_> = plan
        .iter()
        .filter(|m| m.sandbox_path() == Some(target))
        .collect();
    assert_eq!(found.len(), 1, "one mount at {target}: {plan:#?}");
    found[0].clone()
}

const RW_NODEV: Flags = Flags {
    readonly: false,
    nodev: true,
    nosuid: false,
    noexec: false,
};
const RO_NODEV: Flags = Flags {
    readonly: true,
    ..RW_NODEV
};

#[test]
fn run_gets_env_with_proxy_args_last_cwd_user_and_network() {
    let f = fixture();
    let w = f.worker(SnapshotterKind::Copy);
    let base = image(&w, BASE);
    let spec = run(&f, &w, &exec(&[]), &[base]);
    assert_eq!(spec.args, ["/bin/sh", "-c", "make"]);
    // The proxy args come after the op's env; PATH and HOME (the user's) fill in.
    assert_eq!(
        spec.env,
        [
            "A=1".to_string(),
            "HTTP_PROXY=http://proxy:3128".into(),
            format!("PATH={DEFAULT_PATH}"),
            "HOME=/home/app".into(),
        ]
    );
    assert_eq!(spec.cwd, "/work");
    assert_eq!((spec.uid, spec.gid), (1000, 1000));
    assert_eq!(spec.groups, [1000, 2000]);
    assert_eq!(spec.network, NetworkMode::None);
    assert!(!spec.privileged);
    assert!(spec.mounts.is_empty());
    // The copy snapshotter hands the runtime a full copy of the image as the root.
    assert!(matches!(spec.root, RootSpec::Dir));
    assert_eq!(
        spec.host_files,
        [
            ("/etc/resolv.conf".into(), "/etc/resolv.conf".to_string()),
            ("/etc/hosts".into(), "/etc/hosts".to_string())
        ]
    );
}

#[test]
fn run_mounts_become_the_sandbox_mounts() {
    let f = fixture();
    let w = f.worker(SnapshotterKind::Overlay);
    let base = image(&w, BASE);
    let stage = image(&w, &[("out/app", "binary")]);
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    let cache = format!("type=cache,target=/root/.cache,uid={uid},gid={gid}");
    let e = exec(&[
        (&cache, None),
        ("type=bind,from=build,source=/out,target=/src", Some(1)),
        ("type=bind,from=build,target=/scratch,rw", Some(1)),
        ("type=secret,id=token", None),
        ("type=tmpfs,target=/tmp,size=65536", None),
    ]);
    let spec = run(&f, &w, &e, &[base, stage]);
    assert!(matches!(&spec.root, RootSpec::Overlay { lowers, .. } if lowers.len() == 1));
    assert_eq!(mounts::plan(&spec)[0].flags, RW_NODEV, "root");

    let [cache, from, from_rw, secret, tmpfs] = &spec.mounts[..] else {
        panic!("five mounts: {:#?}", spec.mounts)
    };
    // A cache mount: a writable, nodev bind of a directory of the store.
    let MountSpec::Bind {
        source,
        target,
        readonly: false,
    } = cache
    else {
        panic!("cache: {cache:?}")
    };
    assert!(
        source.starts_with(f.store.root().join("cache-mounts")),
        "{source:?}"
    );
    assert_eq!(target, "/root/.cache");
    assert_eq!(plan_at(&spec, "/root/.cache").flags, RW_NODEV);

    // A bind from a stage: its layers, read-only...
    let MountSpec::Layers {
        lowers,
        rw: None,
        subpath,
        readonly: true,
        ..
    } = from
    else {
        panic!("bind from a stage: {from:?}")
    };
    assert_eq!(lowers.len(), 1);
    assert!(lowers[0].join("out/app").is_file());
    assert_eq!(subpath, "/out");
    let m = plan_at(&spec, "/src");
    assert!(matches!(m.kind, Kind::BindFrom { .. }));
    assert_eq!(m.flags, RO_NODEV);
    // ...unless rw, whose writes go to a throw-away upper dir.
    assert!(matches!(
        from_rw,
        MountSpec::Layers {
            rw: Some(_),
            readonly: false,
            ..
        }
    ));
    assert_eq!(plan_at(&spec, "/scratch").flags, RW_NODEV);

    // A secret: a read-only file under /run/secrets.
    assert!(matches!(
        secret,
        MountSpec::Secret { target, mode: 0o400, uid: 0, gid: 0, source }
            if target == "/run/secrets/token" && source == &f.dir.path().join("token")
    ));
    let m = plan_at(&spec, "/run/secrets/token");
    assert!(matches!(m.kind, Kind::SecretFile { .. }));
    assert_eq!(m.flags, RO_NODEV);
    // The secret never enters the env.
    assert!(!spec.env.iter().any(|kv| kv.contains("s3cret")));

    // A tmpfs, with its size.
    assert!(matches!(
        tmpfs,
        MountSpec::Tmpfs { target, size: Some(65536) } if target == "/tmp"
    ));
    assert_eq!(
        plan_at(&spec, "/tmp").kind,
        Kind::Fs {
            fstype: "tmpfs",
            data: Some("mode=1777,size=65536".into())
        }
    );
}

#[test]
fn copy_snapshotter_binds_a_copy_of_the_stage_read_only() {
    let f = fixture();
    let w = f.worker(SnapshotterKind::Copy);
    let stage = image(&w, &[("out/app", "binary")]);
    let e = exec(&[("type=bind,from=build,source=/out,target=/src", Some(1))]);
    let spec = run(&f, &w, &e, &[image(&w, BASE), stage]);
    let [
        MountSpec::Bind {
            source,
            readonly: true,
            ..
        },
    ] = &spec.mounts[..]
    else {
        panic!("one read-only bind: {:#?}", spec.mounts)
    };
    // The copy is gone with the step; it held the stage's subpath.
    assert!(source.ends_with("out"), "{source:?}");
    assert!(!Path::new(source).exists());
    assert_eq!(plan_at(&spec, "/src").flags, RO_NODEV);
}

#[test]
fn a_failed_run_names_the_command_exit_code_and_output() {
    let f = fixture();
    let w = f.worker(SnapshotterKind::Copy);
    let base = image(&w, BASE);
    f.runtime
        .exit_code(2)
        .output(["cc: error", "make: *** failed"]);
    let err = w
        .exec_op(
            VertexId::new(1),
            &exec(&[]),
            &[base],
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "process [\"/bin/sh\",\"-c\",\"make\"] did not complete successfully: exit code: 2\n\
         last output:\ncc: error\nmake: *** failed"
    );
}

/// A tree of 1,500 small files and a 9 MiB file of pseudo-random bytes: several chunks.
fn chunky_tree(dir: &Path, edit: &str) {
    for i in 0..1500 {
        let p = dir.join(format!("small/d{:02}/f{i:04}.txt", i / 100));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut text = format!("file {i}\n").repeat(1 + i % 300);
        if i == 700 {
            text.push_str(edit);
        }
        fs::write(p, text).unwrap();
    }
    fs::write(dir.join("big.bin"), noise(5, 9 << 20)).unwrap();
    pin_times(dir);
}

/// `len` bytes of xorshift noise from `seed` (a multiple of 8).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Gives everything under `dir` one mtime, so its layers' bytes are fixed.
fn pin_times(dir: &Path) {
    let t = filetime::FileTime::from_unix_time(1_700_000_000, 0);
    for e in walkdir::WalkDir::new(dir) {
        filetime::set_symlink_file_times(e.unwrap().path(), t, t).unwrap();
    }
}

#[test]
fn a_committed_layer_s_chunks_are_found_in_the_store_by_the_next_one() {
    let f = fixture();
    let w = f.worker(SnapshotterKind::Copy);
    let dir = w.snapshots.temp_dir("layer").unwrap();
    chunky_tree(dir.path(), "");
    let first = w.commit_layer(VertexId::new(0), dir).unwrap();
    let codec = kiln_layer::chunk_codec(kiln_layer::Compression::default()).unwrap();
    let index = f.store.chunk_index(&codec).unwrap();
    assert!(index.len() >= 4, "{}", index.len());

    // The same tree with one small file edited, written with the store's chunks.
    let edited = tempfile::tempdir().unwrap();
    chunky_tree(edited.path(), "edited\n");
    let opts = LayerOptions {
        chunk_cache: Some(Arc::new(super::chunks::StoreChunks::new(&f.store))),
        ..LayerOptions::default()
    };
    let mut with_cache = Vec::new();
    let info = kiln_layer::write_layer(edited.path(), &opts, &mut with_cache).unwrap();
    let fresh = {
        let mut out = Vec::new();
        kiln_layer::write_layer(edited.path(), &LayerOptions::default(), &mut out).unwrap();
        out
    };
    assert_eq!(with_cache, fresh, "copied chunks, same bytes");
    let reused = info.chunks.iter().filter(|c| c.reused).count();
    assert_eq!(reused, info.chunks.len() - 1, "{:?}", info.chunks);
    assert_ne!(info.digest, first.digest);

    // A damaged byte in the first blob: the chunk holding it is a miss (compressed
    // again), the others are still copied, and the bytes are right.
    let blob = f.store.blob_path(&first.digest);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let opts = LayerOptions {
        chunk_cache: Some(Arc::new(super::chunks::StoreChunks::new(&f.store))),
        ..LayerOptions::default()
    };
    let mut damaged = Vec::new();
    let info = kiln_layer::write_layer(edited.path(), &opts, &mut damaged).unwrap();
    assert_eq!(damaged, fresh);
    let reused = info.chunks.iter().filter(|c| c.reused).count();
    assert_eq!(reused, info.chunks.len() - 2, "{:?}", info.chunks);

    // The first blob collected behind the index's back: every chunk is a miss.
    fs::remove_file(f.store.blob_path(&first.digest)).unwrap();
    let opts = LayerOptions {
        chunk_cache: Some(Arc::new(super::chunks::StoreChunks::new(&f.store))),
        ..LayerOptions::default()
    };
    let mut again = Vec::new();
    let info = kiln_layer::write_layer(edited.path(), &opts, &mut again).unwrap();
    assert!(info.chunks.iter().all(|c| !c.reused));
    assert_eq!(again, fresh);
}

#[test]
fn a_big_file_one_step_wrote_is_reused_by_a_later_step_of_the_same_build() {
    let f = fixture();
    let w = f.worker(SnapshotterKind::Copy);
    let big = noise(11, 9 << 20);
    // A layer holding `big` as `name`: its blob (with the worker's chunk cache) and how
    // many of its chunks were found rather than compressed.
    let write = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &big).unwrap();
        pin_times(dir.path());
        let mut reused = 0;
        let layer = w
            .write_blob(|out| {
                let info = kiln_layer::write_layer(dir.path(), &w.layer_opts, out)?;
                reused = info.chunks.iter().filter(|c| c.reused).count();
                Ok(info)
            })
            .unwrap();
        let mut fresh = Vec::new();
        kiln_layer::write_layer(dir.path(), &LayerOptions::default(), &mut fresh).unwrap();
        assert_eq!(
            fs::read(f.store.blob_path(&layer.digest)).unwrap(),
            fresh,
            "found chunks, same bytes"
        );
        reused
    };
    // The index was read (empty) for the first layer; the second, the same file under
    // another name of the same length (`COPY --from` of a stage's output), finds the
    // first's pieces after the one holding its header.
    assert_eq!(write("out/big.bin"), 0);
    assert!(write("app/big.bin") >= 2);
}
