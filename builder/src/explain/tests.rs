use super::*;
use kiln_cache::BaseInput;

fn f(path: &str, mode: u32, uid: u32, content: u8) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: 'f',
        mode,
        uid,
        gid: 0,
        size: 1,
        hash: Some([content; 32]),
        link: None,
    }
}

fn meta(instruction: &str) -> StepMeta {
    StepMeta {
        number: 3,
        name: format!("[app 1/2] {instruction}"),
        stage: "app".into(),
        position: 1,
        line: 3,
        instruction: instruction.into(),
        definition: "sha256:def".into(),
        ..StepMeta::default()
    }
}

fn prev(instruction: &str, inputs: StepInputs) -> StepRecord {
    StepRecord {
        stage: "app".into(),
        position: 1,
        instruction: instruction.into(),
        definition: "sha256:old".into(),
        key: Some("sha256:k".into()),
        inputs,
        ..StepRecord::default()
    }
}

fn inline(i: &StepInputs) -> Option<FileSet> {
    Some(i.files.clone().unwrap_or_default())
}

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

#[test]
fn files_name_each_change_then_added_then_removed() {
    let old = FileSet(vec![
        f("conf/x", 0o644, 0, 1),
        f("lib/a.py", 0o644, 0, 1),
        f("old", 0o644, 0, 1),
        f("src/main.py", 0o644, 0, 1),
    ]);
    let new = FileSet(vec![
        f("conf/x", 0o644, 1000, 1),
        f("lib/a.py", 0o755, 0, 1),
        f("src/main.py", 0o644, 0, 2),
        f("src/new.py", 0o644, 0, 1),
    ]);
    assert_eq!(
        diff_files(&old, &new).unwrap(),
        "3 files changed: conf/x (owner 0 -> 1000), lib/a.py (mode 644 -> 755), \
         src/main.py (content); 1 added: src/new.py; 1 removed: old"
    );
    assert_eq!(diff_files(&old, &old), None);
}

#[test]
fn files_list_at_most_five_of_each() {
    let old = FileSet((0..7).map(|i| f(&format!("f{i}"), 0o644, 0, 1)).collect());
    let new = FileSet(vec![]);
    assert_eq!(
        diff_files(&old, &new).unwrap(),
        "7 removed: f0, f1, f2, f3, f4 and 2 more"
    );
}

#[test]
fn a_type_change_says_only_that() {
    let mut l = f("x", 0o777, 0, 0);
    l.kind = 'l';
    l.hash = None;
    l.link = Some("y".into());
    assert_eq!(
        diff_files(&FileSet(vec![f("x", 0o644, 0, 1)]), &FileSet(vec![l])).unwrap(),
        "1 file changed: x (type file -> symlink)"
    );
}

#[test]
fn the_base_comes_first() {
    let base = |d: &str| StepInputs {
        base: Some(BaseInput {
            reference: "debian:bookworm".into(),
            digest: d.into(),
            manifest: None,
        }),
        ..StepInputs::default()
    };
    let old = base("sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    let new = base("sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    // Even with the instruction changed too.
    let m = diff_inputs(
        &meta("FROM debian:bookworm AS app"),
        &new,
        &prev("FROM debian:bookworm", old),
        &none(),
        &none(),
        &inline,
    )
    .unwrap();
    assert_eq!(m.kind, "base");
    assert_eq!(
        m.details,
        "FROM debian:bookworm: sha256:aaaaaaaaaaaa… -> sha256:bbbbbbbbbbbb…"
    );
}

/// With both manifest digests recorded, those are named (as `docker images --digests`
/// shows them), not the ChainIDs; a record without one falls back to the ChainIDs.
#[test]
fn the_base_is_named_by_manifest_digest_when_both_records_have_it() {
    let base = |chain: char, manifest: Option<char>| StepInputs {
        base: Some(BaseInput {
            reference: "debian:bookworm".into(),
            digest: format!("sha256:{}", chain.to_string().repeat(64)),
            manifest: manifest.map(|m| format!("sha256:{}", m.to_string().repeat(64))),
        }),
        ..StepInputs::default()
    };
    let said = |old: StepInputs, new: StepInputs| {
        diff_inputs(
            &meta("FROM debian:bookworm"),
            &new,
            &prev("FROM debian:bookworm", old),
            &none(),
            &none(),
            &inline,
        )
        .unwrap()
        .details
    };
    assert_eq!(
        said(base('a', Some('1')), base('b', Some('2'))),
        "FROM debian:bookworm: sha256:111111111111… -> sha256:222222222222…"
    );
    assert_eq!(
        said(base('a', None), base('b', Some('2'))),
        "FROM debian:bookworm: sha256:aaaaaaaaaaaa… -> sha256:bbbbbbbbbbbb…"
    );
    // An old record (no `manifest` field) still reads.
    let old: kiln_cache::StepInputs = serde_json::from_str(
        r#"{"base": {"reference": "debian:bookworm", "digest": "sha256:aa"}}"#,
    )
    .unwrap();
    assert_eq!(old.base.unwrap().manifest, None);
}

#[test]
fn instruction_flags_then_command_then_text() {
    let d = |a: &str, b: &str| {
        diff_inputs(
            &meta(b),
            &StepInputs::default(),
            &prev(a, StepInputs::default()),
            &none(),
            &none(),
            &inline,
        )
        .map(|m| (m.kind, m.details))
    };
    assert_eq!(
        d("COPY --chmod=644 a /b", "COPY --chmod=755 --chown=1 a /b"),
        Some(("instruction".into(), "--chmod, --chown changed".into()))
    );
    assert_eq!(
        d("RUN make", "RUN make all"),
        Some(("instruction".into(), "command changed".into()))
    );
    assert_eq!(
        d("COPY a /b", "COPY a /c"),
        Some((
            "instruction".into(),
            "instruction changed: COPY a /b -> COPY a /c".into()
        ))
    );
    assert_eq!(d("COPY a /b", "COPY a /b"), None);
}

#[test]
fn args_env_and_secrets() {
    let with = |k: &str, v: Option<&str>| StepInputs {
        env: v
            .map(|v| (k.to_string(), v.to_string()))
            .into_iter()
            .collect(),
        ..StepInputs::default()
    };
    let args: BTreeSet<String> = ["VERSION".to_string()].into();
    let secrets: BTreeSet<String> = ["tok".to_string()].into();
    let d = |k: &str, a: Option<&str>, b: Option<&str>| {
        let m = diff_inputs(
            &meta("RUN x"),
            &with(k, b),
            &prev("RUN x", with(k, a)),
            &args,
            &secrets,
            &inline,
        )
        .unwrap();
        (m.kind, m.details)
    };
    assert_eq!(
        d("VERSION", Some("1.2"), Some("1.3")),
        ("arg".into(), "ARG VERSION: 1.2 -> 1.3".into())
    );
    assert_eq!(
        d("VERSION", None, Some("1.3")),
        ("arg".into(), "ARG VERSION: (unset) -> 1.3".into())
    );
    assert_eq!(
        d("MODE", Some("a"), Some("b")),
        ("env".into(), "ENV MODE: a -> b".into())
    );
    // A secret's value is never shown.
    assert_eq!(
        d("tok", Some("s3cret"), Some("other")),
        ("secret".into(), "secret tok changed".into())
    );
}

#[test]
fn the_same_step_is_found_by_definition_or_place() {
    let rec = |id: &str, steps: Vec<StepRecord>| BuildRecord {
        id: id.into(),
        dockerfile: "Dockerfile".into(),
        steps,
        ..BuildRecord::default()
    };
    let mut by_def = prev("COPY x /y", StepInputs::default());
    by_def.definition = "sha256:def".into();
    by_def.position = 7;
    let by_place = prev("COPY a /b", StepInputs::default());
    let mut other_kind = by_place.clone();
    other_kind.instruction = "RUN a".into();
    let records = vec![
        rec("3", vec![other_kind]),
        rec("2", vec![by_place.clone()]),
        rec("1", vec![by_def.clone()]),
    ];
    let all = |_: &BuildRecord| true;
    let (r, s) = find_previous(&records, &meta("COPY a /c"), &all).unwrap();
    assert_eq!((r.id.as_str(), s), ("2", &by_place));
    // Another Dockerfile's steps count only by definition.
    let only_1 = |r: &BuildRecord| r.id == "1";
    let (r, _) = find_previous(&records, &meta("COPY a /c"), &only_1).unwrap();
    assert_eq!(r.id, "1");
    let mut m = meta("COPY a /c");
    m.definition = "sha256:nothing".into();
    assert!(find_previous(&records, &m, &only_1).is_none());
}

#[test]
fn mentions_finds_dollar_names_only() {
    assert!(mentions("RUN echo $VERSION", "VERSION"));
    assert!(mentions("COPY ${VERSION:-1}/x /", "VERSION"));
    assert!(!mentions("RUN echo $VERSIONS", "VERSION"));
    assert!(!mentions("RUN echo VERSION", "VERSION"));
}

#[test]
fn dockerfile_args_take_build_args_over_defaults() {
    let given: BTreeMap<String, String> = [("B".to_string(), "9".to_string())].into();
    let a = dockerfile_args("FROM x\narg A=1 B=2\n  ARG C\nRUN echo\n", &given);
    assert_eq!(
        a,
        [("A", "1"), ("B", "9"), ("C", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    );
}

/// The misses a recorder tells, as `index: reason`.
struct Misses(Mutex<Vec<String>>);

impl Reporter for Misses {
    fn event(&self, e: &Event) {
        if let Event::Miss { id, reason } = e {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}: {reason}", id.index()));
        }
    }
}

/// A recorder of a build in `store`, telling its misses to the sink it gives.
fn recorder(store: &Store) -> (Arc<Misses>, Recorder) {
    let sink = Arc::new(Misses(Mutex::default()));
    let rec = Recorder::new(
        store.clone(),
        BuildRecord::default(),
        sink.clone(),
        None,
        false,
        BTreeSet::new(),
        true,
    );
    (sink, rec)
}

/// Runs `ids` through `rec` as steps that all missed, with one key.
fn miss_all(rec: &Recorder, ids: &[VertexId]) {
    let key = kiln_oci::digest::sha256_digest(b"k");
    for &id in ids {
        rec.event(&Event::Started(id));
        rec.missed(id, &key);
        rec.event(&Event::Done {
            id,
            key: key.clone(),
            duration: std::time::Duration::from_millis(5),
        });
    }
}

/// A recorder over a fake plan: one COPY whose parent missed, and a no-op that reads
/// no records at all.
#[test]
fn recorder_names_the_chain_once_and_reads_no_records_without_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (sink, rec) = recorder(&store);
    let (a, b, c) = (VertexId::new(0), VertexId::new(1), VertexId::new(2));
    let mut metas = HashMap::new();
    let mut m = meta("COPY a /a");
    m.number = 1;
    metas.insert(a, m);
    let mut m = meta("RUN b");
    m.number = 2;
    m.position = 2;
    m.inputs = vec![a];
    metas.insert(b, m);
    let mut m = meta("RUN c");
    m.number = 3;
    m.position = 3;
    m.inputs = vec![b];
    metas.insert(c, m);
    rec.set_plan(metas, BTreeMap::new());
    miss_all(&rec, &[a, b, c]);
    assert_eq!(
        *sink.0.lock().unwrap(),
        [
            "0: no earlier build of this step in this store",
            "1: after step #1",
            "2: after step #1"
        ]
    );
    rec.finish(BuildStatus::Completed, None);
    let saved = store.record_get(&rec.id()).unwrap().unwrap();
    assert_eq!(saved.steps.len(), 3);
    assert_eq!(
        saved.steps[2].miss.as_ref().unwrap().details,
        "after step #1"
    );
    assert_eq!(saved.steps[0].status, Some(StepStatus::Built));
    // A second finish (the drop guard's) writes nothing more.
    rec.finish(BuildStatus::Failed, None);
    assert_eq!(
        store.record_get(&rec.id()).unwrap().unwrap().status,
        Some(BuildStatus::Completed)
    );

    // A build in which everything hits never reads the records.
    let rec2 = Recorder::new(
        store,
        BuildRecord::default(),
        sink,
        None,
        false,
        BTreeSet::new(),
        false,
    );
    rec2.event(&Event::Cached {
        id: a,
        key: kiln_oci::digest::sha256_digest(b"k"),
    });
    assert!(rec2.previous.get().is_none());
}

#[test]
fn a_git_source_misses_with_its_commits_or_its_new_key() {
    let with = |content: &str| StepInputs {
        content: Some(content.into()),
        ..StepInputs::default()
    };
    let d = |a: &str, b: &str| {
        let instruction = "ADD https://h/r.git /src";
        diff_inputs(
            &meta(instruction),
            &with(b),
            &prev(instruction, with(a)),
            &BTreeSet::new(),
            &BTreeSet::new(),
            &inline,
        )
        .unwrap()
        .details
    };
    assert_eq!(
        d("git+submodules:aaa", "git+submodules:bbb"),
        "the git reference moved from aaa to bbb"
    );
    // A record of a kiln that checked out no submodules.
    assert_eq!(
        d("git:aaa", "git+submodules:aaa"),
        "aaa is checked out with its submodules now"
    );
}

/// A step with two parents that missed (a `COPY --from` over a missed base, from a
/// stage that missed) names where each one's chain started; the steps after it name
/// the first.
#[test]
fn a_miss_after_two_missed_parents_names_both_chains() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (sink, rec) = recorder(&store);
    let ids: Vec<VertexId> = (0..4).map(VertexId::new).collect();
    let mut metas = HashMap::new();
    for (i, (text, inputs)) in [
        ("RUN build a", vec![]),
        ("RUN build b", vec![]),
        ("COPY --from=b /out /b", vec![ids[0], ids[1]]),
        ("COPY app /app", vec![ids[2]]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = meta(text);
        m.number = i + 1;
        m.position = i + 1;
        m.inputs = inputs;
        metas.insert(ids[i], m);
    }
    rec.set_plan(metas, BTreeMap::new());
    miss_all(&rec, &ids);
    assert_eq!(
        *sink.0.lock().unwrap(),
        [
            "0: no earlier build of this step in this store",
            "1: no earlier build of this step in this store",
            "2: after steps #1 and #2",
            "3: after step #1"
        ]
    );
}
