//! Build records and miss explanations, end to end: builds on a busybox base made from
//! the host's busybox-static, in a store of the test's own, no network. Each kind of
//! explanation has a test that asserts its exact words, in plain progress, the
//! end-of-build summary and the `--report` JSON. They need root (RUN steps, file owners)
//! and busybox-static (`require_root!`, `require_tool!`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command as Proc;

use kiln_test_support::{Built, KilnStore, busybox_context, kiln_bin, needs};
use serde_json::Value;

const BASE: &str = "busybox:kiln-test";

kiln_test_support::store_env! {
    /// The test's store, build records on (`KilnStore`'s default).
    struct Env;
}

/// What explain's tests read in a build's output and report.
trait Explained {
    /// The `#N MISS: ...` line of step `n`, without the `#N MISS: `.
    fn miss(&self, n: usize) -> Option<String>;
    /// The report's step on Dockerfile line `line`.
    fn report_step(&self, line: u64) -> &Value;
    /// The report's `miss` of the step on Dockerfile line `line`.
    fn report_miss(&self, line: u64) -> Value {
        self.report_step(line)["miss"].clone()
    }
}

impl Explained for Built {
    fn miss(&self, n: usize) -> Option<String> {
        let prefix = format!("#{n} MISS: ");
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }
    fn report_step(&self, line: u64) -> &Value {
        let r = &self.report;
        assert!(!r.is_null(), "a report");
        self.steps()
            .iter()
            .find(|s| s["line"] == line)
            .unwrap_or_else(|| panic!("no step on line {line}: {r}"))
    }
}

impl Env {
    /// A store holding the busybox base.
    fn new() -> Env {
        let env = Env(KilnStore::new());
        env.base(None);
        env
    }

    /// (Re)builds the base, with an extra file when `extra` is given.
    fn base(&self, extra: Option<&str>) {
        self.base_as(BASE, extra);
    }

    /// Builds the base as `tag`, with an extra file when `extra` is given.
    fn base_as(&self, tag: &str, extra: Option<&str>) {
        if let Some(x) = extra {
            let ctx = self.ws.path("busybox");
            if !ctx.exists() {
                busybox_context(&ctx);
            }
            fs::write(ctx.join("rootfs/extra"), x).unwrap();
        }
        self.busybox(tag);
    }

    /// The manifest digest `tag` names in this store.
    fn manifest_of(&self, tag: &str) -> String {
        let store = kiln_cache::Store::open(self.root()).unwrap();
        let tags = store.tags().unwrap();
        let (_, rec) = tags
            .iter()
            .find(|(t, _)| t.ends_with(&format!("/{tag}")) || t == tag)
            .unwrap_or_else(|| panic!("no tag {tag} in {tags:?}"));
        rec.manifest.to_string()
    }

    /// A context `app` with `files` and this Dockerfile.
    fn app(&self, dockerfile: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.ws.context("app", dockerfile);
        for (p, c) in files {
            let path = ctx.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, c).unwrap();
        }
        ctx
    }
}

// Steps of these Dockerfiles: #1 FROM, #2 the build context, #3 line 3, #4 line 4, ...
const APP: &str = "FROM busybox:kiln-test\nARG VERSION=1.2\nCOPY src /src\nRUN echo v=$VERSION > /v\nRUN cat /v\n";

#[test]
fn first_build_has_no_earlier_record() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.app(APP, &[("src/a", "a")]);
    let b = env.build_ok(&ctx, &[]);
    assert_eq!(
        b.miss(3).as_deref(),
        Some("no earlier build of this step in this store")
    );
    assert_eq!(
        b.report_miss(3),
        serde_json::json!({"kind": "no-record", "details": "no earlier build of this step in this store"})
    );
    // The base was resolved for the first time: not a reason for what is on it.
    assert_eq!(
        b.miss(1).as_deref(),
        Some("no earlier build of this step in this store")
    );
    // Its RUN steps missed because COPY did: the chain is named once, by its first step.
    assert_eq!(b.miss(4).as_deref(), Some("after step #3"));
    assert_eq!(b.miss(5).as_deref(), Some("after step #3"));
    assert!(
        b.stderr
            .contains("  line 4: RUN echo v=$VERSION > /v: MISS: after step #3"),
        "{}",
        b.stderr
    );
    // A no-op rebuild: everything cached, nothing to explain.
    let again = env.build_ok(&ctx, &[]);
    assert!(!again.stderr.contains("MISS"), "{}", again.stderr);
}

#[test]
fn changed_files_are_named_with_what_changed() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.app(APP, &[("src/a", "a"), ("src/b", "b"), ("src/gone", "x")]);
    env.build_ok(&ctx, &[]);
    fs::write(ctx.join("src/a"), "changed").unwrap();
    fs::set_permissions(ctx.join("src/b"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ctx.join("src/new"), "n").unwrap();
    fs::remove_file(ctx.join("src/gone")).unwrap();
    let b = env.build_ok(&ctx, &[]);
    let words = "2 files changed: src/a (content), src/b (mode 644 -> 755); 1 added: src/new; \
                 1 removed: src/gone";
    assert_eq!(b.miss(3).as_deref(), Some(words));
    assert_eq!(
        b.report_miss(3),
        serde_json::json!({"kind": "files", "details": words})
    );
    assert_eq!(b.miss(4).as_deref(), Some("after step #3"));
}

#[test]
fn many_changed_files_are_counted_past_five() {
    needs!("busybox");
    let env = Env::new();
    let files: Vec<(String, &str)> = (0..8).map(|i| (format!("src/f{i}"), "x")).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    let ctx = env.app(APP, &refs);
    env.build_ok(&ctx, &[]);
    for (p, _) in &files {
        fs::write(ctx.join(p), "y").unwrap();
    }
    let b = env.build_ok(&ctx, &[]);
    assert_eq!(
        b.miss(3).as_deref(),
        Some(
            "8 files changed: src/f0 (content), src/f1 (content), src/f2 (content), \
             src/f3 (content), src/f4 (content) and 3 more"
        )
    );
}

#[test]
fn a_build_arg_change_is_named_with_its_values() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.app(APP, &[("src/a", "a")]);
    env.build_ok(&ctx, &[]);
    let b = env.build_ok(&ctx, &["--build-arg", "VERSION=1.3"]);
    assert!(
        b.miss(3).is_none(),
        "COPY does not use VERSION: {}",
        b.stderr
    );
    assert_eq!(b.miss(4).as_deref(), Some("ARG VERSION: 1.2 -> 1.3"));
    assert_eq!(
        b.report_miss(4),
        serde_json::json!({"kind": "arg", "details": "ARG VERSION: 1.2 -> 1.3"})
    );
}

#[test]
fn an_env_change_is_named_with_its_values() {
    needs!("busybox");
    let env = Env::new();
    let df = |v: &str| format!("FROM busybox:kiln-test\nENV MODE={v}\nRUN echo $MODE > /m\n");
    let ctx = env.app(&df("fast"), &[]);
    env.build_ok(&ctx, &[]);
    fs::write(ctx.join("Dockerfile"), df("slow")).unwrap();
    let b = env.build_ok(&ctx, &[]);
    // #1 FROM, #2 RUN (no context is read).
    assert_eq!(b.miss(2).as_deref(), Some("ENV MODE: fast -> slow"));
    assert_eq!(b.report_miss(3)["kind"], "env");
}

#[test]
fn instruction_flags_and_commands_are_named() {
    needs!("busybox");
    let env = Env::new();
    let df = |chmod: &str, cmd: &str| {
        format!("FROM busybox:kiln-test\n\nCOPY --chmod={chmod} src /src\nRUN {cmd}\n")
    };
    let ctx = env.app(&df("644", "true"), &[("src/a", "a")]);
    env.build_ok(&ctx, &[]);
    fs::write(ctx.join("Dockerfile"), df("755", "true")).unwrap();
    let b = env.build_ok(&ctx, &[]);
    assert_eq!(b.miss(3).as_deref(), Some("--chmod changed"));
    assert_eq!(b.report_miss(3)["kind"], "instruction");
    assert_eq!(b.miss(4).as_deref(), Some("after step #3"));
    fs::write(ctx.join("Dockerfile"), df("755", "echo hi")).unwrap();
    let b = env.build_ok(&ctx, &[]);
    assert!(b.miss(3).is_none(), "{}", b.stderr);
    assert_eq!(b.miss(4).as_deref(), Some("command changed"));
}

#[test]
fn a_new_base_image_is_named_with_both_digests() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.app(APP, &[("src/a", "a")]);
    env.build_ok(&ctx, &[]);
    env.base(Some("new"));
    let b = env.build_ok(&ctx, &[]);
    let m = b.miss(1).unwrap_or_else(|| panic!("{}", b.stderr));
    let rest = m
        .strip_prefix("FROM busybox:kiln-test: sha256:")
        .unwrap_or_else(|| panic!("{m}"));
    let (old, new) = rest
        .split_once("… -> sha256:")
        .unwrap_or_else(|| panic!("{m}"));
    assert_eq!(old.len(), 12, "{m}");
    assert_eq!(new.len(), 12 + "…".len(), "{m}");
    assert_ne!(old, &new[..12]);
    assert_eq!(b.miss(3).as_deref(), Some("after step #1"));
    assert_eq!(b.miss(5).as_deref(), Some("after step #1"));
}

#[test]
fn a_missing_result_is_not_a_key_change() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.app(APP, &[("src/a", "a")]);
    let first = env.build_ok(&ctx, &[]);
    let layer = report_layer(&first, 3);
    // The blob of COPY's layer is gone (a GC or a hand), and nothing says how to write
    // it again from its snapshot: its key still matches.
    let hex = layer.trim_start_matches("sha256:");
    let blob = env.root().join("blobs/sha256").join(hex);
    let record = env.root().join(format!("snapshots/written/{hex}.json"));
    for f in [&blob, &record] {
        if f.exists() {
            fs::remove_file(f).unwrap();
        }
    }
    assert!(!blob.exists() && !record.exists());
    let b = env.build_ok(&ctx, &[]);
    assert_eq!(
        b.miss(3).as_deref(),
        Some("cache key unchanged, but its result is gone (a layer blob is missing)")
    );
    assert_eq!(b.report_miss(3)["kind"], "gone");
    // Cache records evicted: the key matches the last build's.
    let last = env.ok(&["builds", "ls", "-q"]);
    let last = last.lines().next().unwrap().to_string();
    for e in fs::read_dir(env.root().join("cache")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    let b = env.build_ok(&ctx, &[]);
    assert_eq!(
        b.miss(3),
        Some(format!(
            "cache key unchanged since build {last}, but its result is gone (evicted)"
        ))
    );
}

/// The digest of the layer of the step on Dockerfile line `line`.
fn report_layer(b: &Built, line: u64) -> String {
    b.report_step(line)["layer"]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn builds_are_listed_inspected_exported_and_removed() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.app(APP, &[("src/a", "a")]);
    env.build_ok(&ctx, &["-t", "app:1"]);
    env.build_ok(&ctx, &["-t", "app:1"]);
    fs::write(
        ctx.join("Dockerfile"),
        format!("{APP}RUN echo boom && false\n"),
    )
    .unwrap();
    assert!(!env.build(&ctx, &[]).ok);
    let ls = env.ok(&["builds", "ls"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert!(
        lines[0].starts_with("ID                  STARTED              DURATION     STATUS        STEPS   CACHED   TARGET/TAGS"),
        "{ls}"
    );
    // Newest first: the failed one, two of app:1, the base.
    assert_eq!(lines.len(), 5, "{ls}");
    let cols = |l: &str| {
        l.split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let failed = cols(lines[1]);
    assert_eq!(failed[3], "failed", "{ls}");
    let second = cols(lines[2]);
    assert_eq!(&second[3..], ["completed", "4", "4", "app:1"], "{ls}");
    let first = cols(lines[3]);
    assert_eq!(&first[3..], ["completed", "4", "0", "app:1"], "{ls}");

    // The second build's hits name the first build.
    let json: Value =
        serde_json::from_str(&env.ok(&["builds", "inspect", "--format", "json", &second[0]]))
            .unwrap();
    let copy = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["line"] == 3)
        .unwrap();
    assert_eq!(copy["status"], "cached");
    assert_eq!(
        copy["source"],
        serde_json::json!({"kind": "store", "build": first[0]})
    );
    assert_eq!(copy["inputs"]["files"][0][1], "src", "{copy}");
    let failed_json: Value =
        serde_json::from_str(&env.ok(&["builds", "inspect", "--format", "json", &failed[0]]))
            .unwrap();
    assert_eq!(failed_json["status"], "failed");
    assert!(
        failed_json["error"]
            .as_str()
            .unwrap()
            .contains("RUN echo boom && false"),
        "{failed_json}"
    );
    let text = env.ok(&["builds", "inspect", &failed[0][..12]]);
    assert!(text.contains("Status:     failed: "), "{text}");

    env.kiln()
        .args(["builds", "rm", &failed[0]])
        .assert()
        .success()
        .stdout(format!("{}\n", failed[0]));
    env.kiln()
        .args(["builds", "rm", &failed[0]])
        .assert()
        .failure()
        .stderr(format!("error: no such build record: {}\n", failed[0]));
    assert_eq!(env.ok(&["builds", "ls", "-q"]).lines().count(), 3);
    env.kiln()
        .args(["builds", "rm", "--all"])
        .assert()
        .success();
    assert_eq!(env.ok(&["builds", "ls", "-q"]), "");
}

#[test]
fn records_are_kept_within_the_configured_count_and_can_be_turned_off() {
    needs!("busybox");
    let env = Env::new();
    // Not the base's record and file set: only the app's are counted below.
    env.kiln()
        .args(["builds", "rm", "--all"])
        .assert()
        .success();
    fs::write(env.root().join("config.toml"), "[records]\nmax-count = 2\n").unwrap();
    let ctx = env.app(APP, &[("src/a", "a")]);
    for _ in 0..3 {
        env.build_ok(&ctx, &[]);
    }
    assert_eq!(env.ok(&["builds", "ls", "-q"]).lines().count(), 2);
    // The same files are kept once, however many builds read them.
    let sets = || {
        fs::read_dir(env.root().join("records/files"))
            .unwrap()
            .count()
    };
    assert_eq!(sets(), 1);
    fs::write(ctx.join("src/a"), "b").unwrap();
    env.build_ok(&ctx, &[]);
    assert_eq!(sets(), 2);
    // The old set's last record is trimmed; the set, used a moment ago, stays for a
    // while (a build running beside may refer to it), unless asked for.
    fs::write(env.root().join("config.toml"), "[records]\nmax-count = 1\n").unwrap();
    env.build_ok(&ctx, &[]);
    assert_eq!(env.ok(&["builds", "ls", "-q"]).lines().count(), 1);
    assert_eq!(sets(), 2);
    let last = env.ok(&["builds", "ls", "-q"]);
    env.kiln()
        .args(["builds", "rm", "no-such"])
        .assert()
        .failure();
    assert_eq!(sets(), 1);
    assert_eq!(env.ok(&["builds", "ls", "-q"]), last);
    let before = env.ok(&["builds", "ls", "-q"]);
    env.build_ok(&ctx, &["--no-record"]);
    assert_eq!(env.ok(&["builds", "ls", "-q"]), before);
}

#[test]
fn misses_are_explained_against_an_exported_record() {
    needs!("busybox");
    // From scratch: the two stores' busybox bases differ (their configs' times), and a
    // different base would be the first thing named.
    const SCRATCH: &str = "FROM scratch\n\nCOPY src /src\n";
    let a = Env::new();
    let ctx = a.app(SCRATCH, &[("src/a", "a")]);
    a.build_ok(&ctx, &[]);
    let id = a
        .ok(&["builds", "ls", "-q"])
        .lines()
        .next()
        .unwrap()
        .to_string();
    let export = a.ws.path("exported.json");
    fs::write(
        &export,
        a.ok(&["builds", "inspect", "--format", "json", &id]),
    )
    .unwrap();
    // Another machine: its own store, its own checkout with one file changed.
    let b = Env::new();
    let ctx_b = b.app(SCRATCH, &[("src/a", "A")]);
    let built = b.build_ok(&ctx_b, &["--explain-against", export.to_str().unwrap()]);
    assert_eq!(
        built.miss(2).as_deref(),
        Some("1 file changed: src/a (content)")
    );
    // Same files: the keys match, but this store has no result for them.
    fs::write(ctx_b.join("src/a"), "a").unwrap();
    let c = Env::new();
    let ctx_c = c.app(SCRATCH, &[("src/a", "a")]);
    let built = c.build_ok(&ctx_c, &["--explain-against", export.to_str().unwrap()]);
    assert_eq!(
        built.miss(2),
        Some(format!(
            "cache key matches build {id}, but this store does not have its result"
        ))
    );
    let bad = c.ws.path("bad.json");
    fs::write(&bad, "{").unwrap();
    let out = c.build(&ctx_c, &["--explain-against", bad.to_str().unwrap()]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains(&format!(
            "error: reading the build record {}: ",
            bad.display()
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn an_interrupted_build_leaves_a_record() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.app(
        "FROM busybox:kiln-test\nRUN echo started && sleep 60\n",
        &[],
    );
    let log = env.ws.path("build.log");
    let mut child = env
        .proc()
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    kiln_test_support::wait::until(
        std::time::Duration::from_secs(30),
        "the RUN step to start",
        || {
            fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("#2 started"))
        },
        || fs::read_to_string(&log).unwrap_or_default(),
    );
    let st = Proc::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert!(!status.success());
    let ls = env.ok(&["builds", "ls"]);
    let newest = ls.lines().nth(1).unwrap();
    assert!(newest.contains("   interrupted   "), "{ls}");
    let id = newest.split_whitespace().next().unwrap();
    let rec: Value =
        serde_json::from_str(&env.ok(&["builds", "inspect", "--format", "json", id])).unwrap();
    let run = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["line"] == 2)
        .unwrap();
    assert!(
        run["status"] == "failed" || run["status"] == "cancelled",
        "{run}"
    );
    assert_eq!(
        run["inputs"]["command"][2], "echo started && sleep 60",
        "{run}"
    );
}

/// The base is named by its manifest digests, as users know images (`docker images
/// --digests`), not by the ChainIDs that key the cache.
#[test]
fn a_retagged_base_is_named_by_its_manifest_digests() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.app(APP, &[("src/a", "a")]);
    env.build_ok(&ctx, &[]);
    let old = env.manifest_of(BASE);
    // Another image, then the base's tag moved to it.
    env.base_as("busybox:other", Some("other"));
    env.kiln()
        .args(["tag", "busybox:other", BASE])
        .assert()
        .success();
    let new = env.manifest_of(BASE);
    assert_ne!(old, new);
    assert_eq!(new, env.manifest_of("busybox:other"));
    let b = env.build_ok(&ctx, &[]);
    let short = |d: &str| format!("{}…", &d[..("sha256:".len() + 12)]);
    let words = format!("FROM busybox:kiln-test: {} -> {}", short(&old), short(&new));
    assert_eq!(b.miss(1), Some(words.clone()), "{}", b.stderr);
    assert_eq!(b.miss(3).as_deref(), Some("after step #1"));
    // The record keeps both digests of the base.
    let id = env.ok(&["builds", "ls", "-q"]);
    let id = id.lines().next().unwrap();
    let rec: Value =
        serde_json::from_str(&env.ok(&["builds", "inspect", "--format", "json", id])).unwrap();
    let from = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["number"] == 1)
        .unwrap();
    assert_eq!(from["inputs"]["base"]["manifest"], new.as_str(), "{from}");
    assert!(
        from["inputs"]["base"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{from}"
    );
    assert_ne!(from["inputs"]["base"]["digest"], new.as_str(), "{from}");
}

/// On a terminal (`--progress tty`, run under `script` for a real pty), a miss is shown
/// with its explanation, and the end-of-build summary lists the misses.
#[test]
fn the_tty_display_shows_misses_and_the_summary_lists_them() {
    needs!("busybox");
    let script = kiln_test_support::require_tool!("script");
    let env = Env::new();
    let ctx = env.app(APP, &[("src/a", "a")]);
    env.build_ok(&ctx, &[]);
    fs::write(ctx.join("src/a"), "changed").unwrap();
    let kiln = kiln_bin();
    let cmd = format!(
        "stty cols 200 rows 50; {} build --progress tty {}",
        kiln.display(),
        ctx.display()
    );
    let out = Proc::new(script)
        .args(["-qefc", &cmd, "/dev/null"])
        .env("KILN_ROOT", env.root())
        .env("TERM", "xterm")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("KILN_NO_RECORD")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kiln build under script failed:\n{shown}"
    );
    // Lines without their terminal controls.
    let lines: Vec<String> = shown
        .split(['\n', '\r'])
        .map(|l| strip_controls(l).trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    // A line the display wrote whole: at the start of a line or after the padding of
    // the one before (the terminal wraps at its width), and ended or padded.
    let has = |want: &str| {
        lines.iter().any(|l| {
            l.match_indices(want).any(|(i, _)| {
                (i == 0 || l[..i].ends_with(' '))
                    && matches!(l[i + want.len()..].chars().next(), None | Some(' '))
            })
        })
    };
    for want in [
        "#3 MISS: 1 file changed: src/a (content)",
        "#4 MISS: after step #3",
        "#5 MISS: after step #3",
        "  line 3: COPY src /src: MISS: 1 file changed: src/a (content)",
        "  line 4: RUN echo v=$VERSION > /v: MISS: after step #3",
        "  line 5: RUN cat /v: MISS: after step #3",
    ] {
        assert!(has(want), "no line {want:?} in the tty output:\n{lines:#?}");
    }
    // The tty display, not plain lines.
    assert!(!has("#3 DONE"), "{lines:#?}");
    assert!(shown.contains('\u{1b}'), "no terminal controls:\n{shown}");
}

/// `text` without ANSI escape sequences (CSI `ESC [ ... letter`, and two-byte ones).
fn strip_controls(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}
