//! End-to-end tests of the `kiln` binary's frontend commands, driven by the fixtures in
//! `testdata/frontend` and BuildKit's cases in `shared/testdata/buildkit`.

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use kiln_test_support::repo_root as repo;

fn kiln() -> Command {
    Command::cargo_bin("kiln").unwrap()
}

fn fixture_dirs(kind: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(repo().join("testdata/frontend").join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn options(dir: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(dir.join("options")) else {
        return vec![];
    };
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| format!("--{k}={v}"))
        .collect()
}

#[test]
fn invalid_dockerfiles_fail_with_location_and_caret() {
    let dirs = fixture_dirs("invalid");
    assert!(dirs.len() > 20);
    let mut failures = Vec::new();
    for dir in dirs {
        let want = fs::read_to_string(dir.join("error")).unwrap();
        let out = kiln()
            .current_dir(&dir)
            .args(["build", "--dry-run", "-f", "Dockerfile"])
            .args(options(&dir))
            .arg(".")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("");
        if out.status.success() || first != want.trim_end() {
            failures.push(format!(
                "{}:\n  want: {}\n  got:  {stderr}",
                dir.display(),
                want.trim_end()
            ));
            continue;
        }
        // Located errors show the offending line and a caret under the column.
        if let Some(line_no) = first
            .split(':')
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
        {
            let src = fs::read_to_string(dir.join("Dockerfile")).unwrap();
            let line = src.lines().nth(line_no - 1).unwrap_or("");
            let mut rest = stderr.lines().skip(1);
            let shown = rest.next().unwrap_or("");
            assert!(
                shown.ends_with(line),
                "{}: excerpt {shown:?} should show {line:?}",
                dir.display()
            );
            assert!(
                rest.next().unwrap_or("").trim_end().ends_with('^'),
                "{}: no caret",
                dir.display()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_dockerfiles_plan() {
    for dir in fixture_dirs("valid") {
        let out = kiln()
            .current_dir(&dir)
            .args(["build", "--dry-run", "."])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let plan = String::from_utf8_lossy(&out.stdout);
        assert!(plan.contains("parallel levels"), "{plan}");
        let dot = kiln()
            .current_dir(&dir)
            .args(["build", "--dry-run", "--format", "dot", "."])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&dot.stdout).starts_with("digraph kiln {"));
    }
}

#[test]
fn dry_run_shows_parallel_stages_and_prunes_unused() {
    let dir = repo().join("testdata/frontend/valid/multistage");
    let out = kiln()
        .args(["build", "--dry-run"])
        .arg(&dir)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        !plan.contains("never built"),
        "unused stage must be pruned:\n{plan}"
    );
    let level1 = plan
        .lines()
        .find(|l| l.trim_start().starts_with("level 1:"))
        .unwrap();
    assert_eq!(
        level1.split_whitespace().count(),
        4,
        "two RUNs of independent stages side by side: {level1}"
    );
    let out = kiln()
        .args(["build", "--dry-run", "--target", "stage_b"])
        .arg(&dir)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("echo b") && !plan.contains("echo a"),
        "{plan}"
    );
}

#[test]
fn dry_run_plan_is_deterministic() {
    let dir = repo().join("testdata/frontend/valid/args");
    let run = || {
        kiln()
            .args(["build", "--dry-run", "--build-arg", "VERSION=2"])
            .arg(&dir)
            .output()
            .unwrap()
            .stdout
    };
    assert_eq!(run(), run());
    let other = kiln()
        .args(["build", "--dry-run", "--build-arg", "VERSION=3"])
        .arg(&dir)
        .output()
        .unwrap()
        .stdout;
    assert_ne!(run(), other);
}

#[test]
fn unused_build_arg_warns() {
    let dir = repo().join("testdata/frontend/valid/multistage");
    kiln()
        .args(["build", "--dry-run", "--build-arg", "NOT_DECLARED=1"])
        .arg(&dir)
        .assert()
        .success()
        .stderr(predicates::str::contains(
            "build args were not consumed: [NOT_DECLARED]",
        ));
}

#[test]
fn dockerignore_patterns_reach_the_context_source() {
    let dir = repo().join("testdata/frontend/valid/demo");
    kiln()
        .args(["build", "--dry-run"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "local context \"context\" (2 ignore patterns)",
        ));
}

#[test]
fn parse_dump_matches_buildkit() {
    // `$KILN_SHARED_DIR`, or the first ancestor holding `shared/`, as the frontend's
    // BuildKit suites find it.
    let shared = match std::env::var_os("KILN_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir).join("testdata/buildkit/testfiles"),
        None => repo()
            .ancestors()
            .map(|a| a.join("shared/testdata/buildkit/testfiles"))
            .find(|p| p.is_dir())
            .expect("shared/testdata/buildkit next to the repository (or set KILN_SHARED_DIR)"),
    };
    for case in ["env", "json", "flags", "escape", "continueIndent"] {
        let dir = shared.join(case);
        assert!(
            dir.is_dir(),
            "BuildKit's parser case {} is missing",
            dir.display()
        );
        let want = fs::read_to_string(dir.join("result")).unwrap();
        kiln()
            .args(["parse", "--dump"])
            .arg(dir.join("Dockerfile"))
            .assert()
            .success()
            .stdout(want);
    }
    let neg = shared
        .parent()
        .unwrap()
        .join("testfiles-negative/env_no_value/Dockerfile");
    kiln().args(["parse", "--dump"]).arg(neg).assert().failure();
}

/// The sandbox's init process reports a spec it cannot read through `main` (the library
/// prints nothing) and exits with runc's setup-error code.
#[test]
fn sandbox_init_without_a_spec_says_why_and_exits_125() {
    kiln()
        .args([kiln_sandbox::linux::INIT_ARG, "/nonexistent/spec.json"])
        .assert()
        .code(i32::from(kiln_sandbox::linux::SETUP_ERROR_CODE))
        .stderr(predicates::str::starts_with(
            "kiln sandbox: reading /nonexistent/spec.json: No such file or directory",
        ));
}

/// Every prune command asks Docker's question through one helper, and a no (or no
/// answer: stdin closed) removes nothing and succeeds.
#[test]
fn every_prune_command_asks_dockers_question() {
    let root = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["prune"],
            "WARNING! This will remove all dangling build cache. Are you sure you want to continue? [y/N] ",
        ),
        (
            &["prune", "--all"],
            "WARNING! This will remove all build cache. Are you sure you want to continue? [y/N] ",
        ),
        (
            &["container", "prune"],
            "WARNING! This will remove all stopped containers.\nAre you sure you want to continue? [y/N] ",
        ),
        (
            &["volume", "prune"],
            "WARNING! This will remove anonymous local volumes not used by at least one container.\nAre you sure you want to continue? [y/N] ",
        ),
        (
            &["volume", "prune", "-a"],
            "WARNING! This will remove all local volumes not used by at least one container.\nAre you sure you want to continue? [y/N] ",
        ),
        (
            &["image", "prune"],
            "WARNING! This will remove all dangling images.\nAre you sure you want to continue? [y/N] ",
        ),
        (
            &["image", "prune", "-a"],
            "WARNING! This will remove all images without at least one container associated to them.\nAre you sure you want to continue? [y/N] ",
        ),
    ];
    for (args, prompt) in cases {
        for answer in ["n\n", ""] {
            kiln()
                .env("KILN_ROOT", root.path())
                .args(args)
                .write_stdin(answer)
                .assert()
                .success()
                .stdout("")
                .stderr(prompt.to_string());
        }
    }
}
