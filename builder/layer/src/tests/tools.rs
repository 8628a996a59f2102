//! Written layers as the real GNU tar, gunzip, zstd and sha256sum see them.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use tempfile::tempdir;

use super::*;

/// Runs a shell pipeline and returns its stdout (panicking on failure).
fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[test]
fn gnu_tar_lists_sorted_entries_and_sha256sum_matches_diff_id() {
    let src = tempdir().unwrap();
    build_rich_tree(src.path());
    let work = tempdir().unwrap();

    let (plain, tar_bytes) = write_vec(src.path(), &opts(Compression::Uncompressed, Some(0)));
    let tar_path = work.path().join("layer.tar");
    fs::write(&tar_path, &tar_bytes).unwrap();
    let names: Vec<String> = sh(&format!("tar -tf {}", quote(&tar_path)))
        .lines()
        .map(str::to_owned)
        .collect();
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(names, sorted, "GNU tar lists the entries in byte order");
    let ours: Vec<String> = tar_entries(&tar_bytes)
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ours);
    assert!(names.contains(&format!("{LONG_DIR}/{LONG_FILE}")));

    let verbose = sh(&format!("tar -tvf {}", quote(&tar_path)));
    // `tar -tvf` lines: mode owner size date time name [-> target | link to target].
    let verbose_names: Vec<&str> = verbose
        .lines()
        .map(|l| l.split_whitespace().nth(5).unwrap())
        .collect();
    assert_eq!(verbose_names, names);
    assert!(
        verbose.contains("usr/bin/tool2 link to usr/bin/tool"),
        "{verbose}"
    );
    assert!(verbose.contains("etc/alias -> hostname"), "{verbose}");
    assert!(
        verbose
            .lines()
            .any(|l| l.starts_with("-rwsr-xr-x") && l.ends_with("usr/bin/tool")),
        "{verbose}"
    );
    assert!(
        verbose
            .lines()
            .any(|l| l.starts_with('p') && l.ends_with(" pipe"))
    );

    // sha256sum of the decompressed blobs is the diff_id.
    let hex = plain.diff_id.hex();
    for (compression, ext, cat) in [
        (Compression::default(), "gz", "gunzip -c"),
        (Compression::Zstd { level: 3 }, "zst", "zstd -q -d -c"),
        (Compression::Uncompressed, "tar", "cat"),
    ] {
        let (info, blob) = write_vec(src.path(), &opts(compression, Some(0)));
        assert_eq!(info.diff_id, plain.diff_id);
        let path = work.path().join(format!("layer.{ext}"));
        fs::write(&path, &blob).unwrap();
        let sum = sh(&format!("{cat} {} | sha256sum", quote(&path)));
        assert_eq!(sum.split_whitespace().next(), Some(hex), "{ext}");
        let blob_sum = sh(&format!("sha256sum {}", quote(&path)));
        assert_eq!(
            blob_sum.split_whitespace().next(),
            Some(info.digest.hex()),
            "{ext}"
        );
    }
}

#[test]
fn gnu_tar_extracts_what_was_written() {
    let src = tempdir().unwrap();
    build_rich_tree(src.path());
    let (_, blob) = write_vec(src.path(), &opts(Compression::default(), None));
    let work = tempdir().unwrap();
    let path = work.path().join("layer.tar.gz");
    fs::write(&path, &blob).unwrap();
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --numeric-owner -xpzf {} -C {}",
        quote(&path),
        quote(&out)
    ));
    let before = snapshot(src.path());
    let after = snapshot(&out);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, node) in &before {
        let got = &after[path];
        // GNU tar does not restore a symlink's own mtime or xattrs on
        // every system; compare what it does restore.
        assert_eq!(
            (node.kind, node.mode, node.uid, node.gid, node.size),
            (got.kind, got.mode, got.uid, got.gid, got.size),
            "{path}"
        );
        assert_eq!(
            (&node.data, &node.link, node.rdev),
            (&got.data, &got.link, got.rdev),
            "{path}"
        );
        assert_eq!(node.hardlink_of, got.hardlink_of, "{path}");
        if node.kind == "file" {
            assert_eq!(node.xattrs, got.xattrs, "{path}");
            assert_eq!(node.mtime, got.mtime, "{path}");
        }
    }
}
