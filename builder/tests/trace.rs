//! `kiln build --trace FILE.json`: Chrome trace events of a real build. Two independent
//! stages each `RUN sleep 1`, combined by `COPY --from`: their spans must overlap on two
//! threads. Root and busybox (`needs!`).

use std::fs;

use assert_cmd::Command;
use kiln_test_support::{Workspace, busybox_context, require_root, require_tool};
use serde_json::Value;

const BASE: &str = "busybox:kiln-test";

fn kiln(ws: &Workspace) -> Command {
    let mut c = Command::cargo_bin("kiln").unwrap();
    c.env("KILN_ROOT", ws.path("store"));
    c
}

/// The complete events (`ph: X`) of a trace file, checked for the format's fields.
fn spans(path: &std::path::Path) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&fs::read(path).unwrap()).expect("valid JSON");
    let events = v["traceEvents"].as_array().expect("traceEvents");
    let spans: Vec<Value> = events.iter().filter(|e| e["ph"] == "X").cloned().collect();
    for e in &spans {
        for field in ["ts", "dur", "pid", "tid"] {
            assert!(e[field].is_u64(), "{field} of {e}");
        }
        assert!(e["name"].is_string(), "{e}");
    }
    spans
}

fn span<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|e| e["name"].as_str().is_some_and(|n| n.ends_with(name)))
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

#[test]
fn trace_shows_every_step_and_parallel_stages() {
    require_root!();
    require_tool!("busybox");
    let ws = Workspace::new();
    let base = ws.path("busybox");
    busybox_context(&base);
    kiln(&ws)
        .args(["build", "-q", "-t", BASE])
        .arg(&base)
        .assert()
        .success();
    // No collection after a build on a nearly full disk: the rebuild below must hit.
    fs::write(
        ws.path("store/config.toml"),
        "[gc]\nmin-free-space = \"0\"\n",
    )
    .unwrap();
    let ctx = ws.context(
        "par",
        &format!(
            "FROM {BASE} AS one\nRUN sleep 1 && echo one > /one\n\
             FROM {BASE} AS two\nRUN sleep 1 && echo two > /two\n\
             FROM {BASE}\nCOPY --from=one /one /one\nCOPY --from=two /two /two\n"
        ),
    );
    let trace = ws.path("trace.json");
    let oci = ws.path("out.tar");
    kiln(&ws)
        .args(["build", "--progress", "plain", "-t", "par:1", "--trace"])
        .arg(&trace)
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.display()))
        .arg(&ctx)
        .assert()
        .success();
    let s = spans(&trace);
    let one = span(&s, "RUN sleep 1 && echo one > /one");
    let two = span(&s, "RUN sleep 1 && echo two > /two");
    let range = |e: &Value| {
        let ts = e["ts"].as_u64().unwrap();
        (ts, ts + e["dur"].as_u64().unwrap())
    };
    let ((a0, a1), (b0, b1)) = (range(one), range(two));
    assert!(a1 - a0 >= 1_000_000 && b1 - b0 >= 1_000_000, "{one} {two}");
    assert!(
        a0 < b1 && b0 < a1,
        "the stages ran one after the other: {one} {two}"
    );
    assert_ne!(one["tid"], two["tid"], "one thread for both stages");
    // Every step of the Dockerfile is there, with its cache state.
    for name in [
        "[one 1/1] RUN sleep 1 && echo one > /one",
        "[two 1/1] RUN sleep 1 && echo two > /two",
        "COPY --from=one /one /one",
        "COPY --from=two /two /two",
    ] {
        let e = span(&s, name);
        assert_eq!(e["cat"], "step", "{e}");
        assert_eq!(e["args"]["cache"], "miss", "{e}");
    }
    // The base's vertex too: five steps in all.
    let steps = s.iter().filter(|e| e["cat"] == "step").count();
    assert_eq!(steps, 5, "{s:#?}");
    // The explainer's miss kind (a first build: no earlier record to compare with).
    assert_eq!(one["args"]["miss"], "no-record", "{one}");
    let export = span(&s, &format!("export type=oci,dest={}", oci.display()));
    assert_eq!(export["cat"], "export");
    span(&s, "assemble image");

    // Again: every step a hit.
    kiln(&ws)
        .args(["build", "--progress", "quiet", "-t", "par:1", "--trace"])
        .arg(&trace)
        .arg(&ctx)
        .assert()
        .success();
    let s = spans(&trace);
    let steps: Vec<&Value> = s.iter().filter(|e| e["cat"] == "step").collect();
    assert_eq!(steps.len(), 5, "{steps:#?}");
    for e in steps {
        assert_eq!(e["args"]["cache"], "hit", "{e}");
    }
}

/// `--push` and a later build from the pushed image (resolved, its layers pulled): the
/// push, its blob uploads and the pulled blobs are spans too.
#[test]
fn trace_shows_pushes_and_pulls() {
    require_root!();
    require_tool!("busybox");
    require_tool!("docker-registry");
    let reg =
        kiln_test_support::registry::Registry::start(&kiln_test_support::registry::Auth::None);
    let ws = Workspace::new();
    let base = ws.path("busybox");
    busybox_context(&base);
    let name = reg.name("kiln/base:1");
    let trace = ws.path("push.json");
    kiln(&ws)
        .args([
            "build",
            "--progress",
            "plain",
            "--push",
            "-t",
            &name,
            "--trace",
        ])
        .arg(&trace)
        .arg(&base)
        .assert()
        .success();
    let s = spans(&trace);
    assert_eq!(span(&s, &format!("push {name}"))["cat"], "push");
    let uploads = s
        .iter()
        .filter(|e| e["cat"] == "push" && e["name"].as_str().unwrap().starts_with("push sha256:"))
        .count();
    assert!(uploads >= 2, "a layer and the config: {s:#?}");

    // Another store builds on the pushed image: its layer is downloaded for the RUN.
    let other = Workspace::new();
    let ctx = other.context("app", &format!("FROM {name}\nRUN echo hi > /hi\n"));
    let trace = other.path("pull.json");
    kiln(&other)
        .args(["build", "--progress", "plain", "--trace"])
        .arg(&trace)
        .arg(&ctx)
        .assert()
        .success();
    let s = spans(&trace);
    assert_eq!(span(&s, &format!("resolve {name}"))["cat"], "pull");
    assert!(
        s.iter()
            .any(|e| e["cat"] == "pull" && e["args"]["result"] == "downloaded"),
        "{s:#?}"
    );
}
