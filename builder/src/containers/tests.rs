use super::spec::{RunOptions, container_config};
use super::*;
use crate::image::{ImageConfig, ParsedConfig};
use crate::images::ImageInfo;
use kiln_oci::Digest;

fn image(config: ImageConfig) -> ImageInfo {
    let d = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
    ImageInfo {
        manifest_digest: d.clone(),
        config_digest: d.clone(),
        layers: Vec::new(),
        chain_id: d,
        config: ParsedConfig {
            config,
            ..Default::default()
        },
    }
}

fn config_with(opts: &RunOptions) -> Result<ContainerConfig> {
    let ic = ImageConfig {
        entrypoint: Some(vec!["/entry".into()]),
        cmd: Some(vec!["serve".into(), "--port=1".into()]),
        env: vec!["PATH=/bin".into(), "A=image".into()],
        working_dir: "/app".into(),
        user: "daemon".into(),
        stop_signal: Some("SIGUSR1".into()),
        ..Default::default()
    };
    container_config("app:1", &image(ic), opts)
}

#[test]
fn docker_rules_for_entrypoint_cmd_env_workdir_user() {
    let c = config_with(&RunOptions::default()).unwrap();
    assert_eq!(c.process.args(), ["/entry", "serve", "--port=1"]);
    assert_eq!(c.process.env, ["PATH=/bin", "A=image"]);
    assert_eq!(c.process.working_dir, "/app");
    assert_eq!(c.process.user, "daemon");
    assert_eq!(c.stop_signal.as_deref(), Some("SIGUSR1"));

    // Arguments replace Cmd only.
    let c = config_with(&RunOptions {
        command: vec!["x".into()],
        env: vec!["A=cli".into(), "B=2".into()],
        workdir: Some("/w".into()),
        user: Some("0:0".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.process.args(), ["/entry", "x"]);
    assert_eq!(c.process.env, ["PATH=/bin", "A=cli", "B=2"]);
    assert_eq!(c.process.working_dir, "/w");
    assert_eq!(c.process.user, "0:0");

    // --entrypoint resets Cmd; --entrypoint "" clears it.
    let c = config_with(&RunOptions {
        entrypoint: Some("/bin/sh".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.process.args(), ["/bin/sh"]);
    let c = config_with(&RunOptions {
        entrypoint: Some(String::new()),
        command: vec!["ls".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.process.args(), ["ls"]);
    let e = config_with(&RunOptions {
        entrypoint: Some(String::new()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().starts_with("no command specified"), "{e}");
    let e = config_with(&RunOptions {
        workdir: Some("rel".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("absolute path"), "{e}");
}

#[test]
fn path_is_set_when_the_image_has_none() {
    let c = container_config(
        "x",
        &image(ImageConfig {
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        }),
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(
        c.process.env,
        [format!("PATH={}", kiln_frontend::convert::DEFAULT_PATH)]
    );
    assert_eq!(c.process.working_dir, "/");
}

fn store() -> (tempfile::TempDir, Containers) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let c = Containers::open(&store).unwrap();
    (dir, c)
}

#[test]
fn create_names_lookup_and_remove() {
    let (_dir, cs) = store();
    let mut cfg = config_with(&RunOptions {
        network: Some(Network::None),
        ..Default::default()
    })
    .unwrap();
    let a = cs.create(cfg.clone()).unwrap();
    assert_eq!(a.id.len(), 64);
    assert!(names::is_valid(&a.name), "{}", a.name);
    assert_eq!(a.config.process.hostname, a.id[..12]);
    assert!(cs.upper_dir(&a.id).is_dir());
    assert_eq!(a.state.status, Status::Created);

    cfg.name = "web".into();
    let b = cs.create(cfg.clone()).unwrap();
    let e = cs.create(cfg.clone()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Conflict. The container name \"/web\" is already in use by container \"{}\". \
             You have to remove (or rename) that container to be able to reuse that name.",
            b.id
        )
    );
    cfg.name = "-bad".into();
    assert!(matches!(
        cs.create(cfg.clone()),
        Err(ContainerError::InvalidName(_))
    ));

    assert_eq!(cs.get("web").unwrap().id, b.id);
    assert_eq!(cs.get("/web").unwrap().id, b.id);
    assert_eq!(cs.get(&b.id).unwrap().name, "web");
    assert_eq!(cs.get(&b.id[..12]).unwrap().name, "web");
    assert_eq!(cs.get(&a.name).unwrap().id, a.id);
    assert_eq!(
        cs.get("nope").unwrap_err().to_string(),
        "No such container: nope"
    );
    assert_eq!(cs.list().unwrap().len(), 2);

    cs.remove(&b.id, false).unwrap();
    assert!(!cs.dir(&b.id).exists());
    assert!(matches!(cs.get("web"), Err(ContainerError::NotFound(_))));
    assert_eq!(cs.list().unwrap().len(), 1);
}

#[test]
fn a_running_state_with_a_dead_pid_is_exited_or_dead() {
    let (_dir, cs) = store();
    let cfg = config_with(&RunOptions::default()).unwrap();
    let c = cs.create(cfg).unwrap();
    // A pid that cannot be alive with that start time.
    cs.mark_running(&c.id, i32::MAX - 1, 1, false).unwrap();
    let got = cs.get(&c.id).unwrap();
    assert_eq!(got.state.status, Status::Dead);
    assert_eq!(got.state.exit_code, 137);

    // The init process recorded how pid 1 ended.
    fs::write(
        cs.result_path(&c.id),
        serde_json::to_vec(&InitResult::Exited(3)).unwrap(),
    )
    .unwrap();
    let got = cs.get(&c.id).unwrap();
    assert_eq!((got.state.status, got.state.exit_code), (Status::Exited, 3));

    // A monitor's record wins.
    let rec = ExitRecord {
        exit_code: 143,
        error: None,
        finished_at: "2026-01-01T00:00:00Z".into(),
    };
    fs::write(cs.exit_path(&c.id), serde_json::to_vec(&rec).unwrap()).unwrap();
    let got = cs.get(&c.id).unwrap();
    assert_eq!(got.state.exit_code, 143);
    assert_eq!(
        got.state.finished_at.as_deref(),
        Some("2026-01-01T00:00:00Z")
    );

    // Our own process is alive: running.
    let me = std::process::id() as i32;
    let t = kiln_sandbox::container::start_time(me).unwrap();
    cs.mark_running(&c.id, me, t, false).unwrap();
    assert!(cs.get(&c.id).unwrap().state.running());
    assert!(matches!(
        cs.remove(&c.id, false),
        Err(ContainerError::Running(_))
    ));
}

#[test]
fn signals_parse_as_docker_takes_them() {
    assert_eq!(signal_number("SIGTERM"), Some(15));
    assert_eq!(signal_number("term"), Some(15));
    assert_eq!(signal_number("KILL"), Some(9));
    assert_eq!(signal_number("10"), Some(10));
    assert_eq!(signal_number("SIGRTMIN+3"), Some(37));
    assert_eq!(signal_number("RTMAX-1"), Some(63));
    assert_eq!(signal_number("SIGNOPE"), None);
    assert_eq!(signal_number("0"), None);
}
