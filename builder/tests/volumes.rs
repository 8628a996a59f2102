//! Volumes, sizes, changes, commit and disk use for real: `kiln run` over a busybox image
//! built by kiln itself, in a store of the test's own, then `volume`, `diff`, `ps -s`,
//! `commit`, `system df` and `rmi`. They need root (namespaces, overlayfs) and
//! busybox-static (`require_root!`, `require_tool!`).

use std::path::Path;
use std::process::Command as Proc;

use kiln_test_support::{KilnStore, needs};

const BASE: &str = kiln_test_support::BUSYBOX;

kiln_test_support::store_env! {
    /// A store holding the busybox base.
    struct Env;
}

impl Env {
    fn new() -> Env {
        Env(KilnStore::new().with_busybox(BASE))
    }

    /// Builds `dockerfile` as `tag`.
    fn image(&self, tag: &str, dockerfile: &str) {
        let ctx = self.ws.context(&tag.replace(':', "-"), dockerfile);
        self.ok(&[
            "build",
            "--progress",
            "quiet",
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ]);
    }

    /// Runs kiln with `args`, which must succeed; its stdout, trimmed (unlike
    /// [`KilnStore::ok`]'s).
    fn ok(&self, args: &[&str]) -> String {
        self.0.ok(args).trim().to_string()
    }

    /// Runs kiln with `args`, which must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(!o.status.success(), "kiln {args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).trim().to_string()
    }

    fn volume_names(&self) -> Vec<String> {
        let out = self.ok(&["volume", "ls", "-q"]);
        out.lines().map(str::to_string).collect()
    }

    /// The SIZE cell of `ps -a -s` for container `name`.
    fn ps_size(&self, name: &str) -> String {
        let out = self.ok(&["ps", "-a", "-s"]);
        let line = out
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == name))
            .unwrap_or_else(|| panic!("{name} not in ps:\n{out}"));
        let start = line
            .rfind(" (virtual ")
            .expect("a size with its virtual size");
        let before = line[..start].trim_end();
        let size = before.rsplit(' ').next().unwrap();
        format!("{size}{}", &line[start..])
    }
}

/// `3MB (virtual 55MB)` -> bytes of the first figure (Docker's decimal units).
fn parse_size(s: &str) -> f64 {
    let figure = s.split_whitespace().next().unwrap();
    let split = figure
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap();
    let (n, unit) = figure.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        u => panic!("unit {u}"),
    };
    n.parse::<f64>().unwrap() * scale
}

/// `du -sb DIR`.
fn du(dir: &Path) -> u64 {
    let out = Proc::new("du").arg("-sb").arg(dir).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn volume_copy_up_fills_an_empty_named_volume_once() {
    needs!("busybox");
    let env = Env::new();
    env.image(
        "seeded:1",
        "FROM busybox:kiln-test\nRUN mkdir -p /srv/app && echo seed > /srv/app/conf && chown 1000:1000 /srv/app/conf && chmod 640 /srv/app/conf && ln -s conf /srv/app/link\n",
    );
    let out = env.ok(&[
        "run", "--rm", "-v", "appdata:/srv/app", "seeded:1", "sh", "-c",
        "cat /srv/app/conf; stat -c '%u:%g %a' /srv/app/conf; readlink /srv/app/link; rm /srv/app/conf",
    ]);
    assert_eq!(out, "seed\n1000:1000 640\nconf");
    // Emptied by the first container: never filled again.
    let out = env.ok(&[
        "run",
        "--rm",
        "-v",
        "appdata:/srv/app",
        "seeded:1",
        "ls",
        "/srv/app",
    ]);
    assert_eq!(out, "link");
    // `nocopy`: a fresh volume stays empty.
    let out = env.ok(&[
        "run",
        "--rm",
        "-v",
        "bare:/srv/app:nocopy",
        "seeded:1",
        "ls",
        "/srv/app",
    ]);
    assert_eq!(out, "");
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "inspect", "appdata"])).unwrap();
    assert_eq!(v[0]["Name"], "appdata");
    assert_eq!(v[0]["Driver"], "local");
    let link = Path::new(v[0]["Mountpoint"].as_str().unwrap()).join("link");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
}

#[test]
fn named_volume_outlives_its_container_and_refuses_removal_while_used() {
    needs!("busybox");
    let env = Env::new();
    env.ok(&["volume", "create", "shared"]);
    env.ok(&[
        "run",
        "--name",
        "writer",
        "-v",
        "shared:/data",
        BASE,
        "sh",
        "-c",
        "echo hello > /data/f",
    ]);
    let users = env.fails(&["volume", "rm", "shared"]);
    let id = env.ok(&["ps", "-a", "-q", "--no-trunc"]);
    assert_eq!(
        users,
        format!("error: remove shared: volume is in use - [{id}]")
    );
    env.ok(&["rm", "-v", "writer"]);
    let out = env.ok(&[
        "run",
        "--rm",
        "-v",
        "shared:/data:ro",
        BASE,
        "cat",
        "/data/f",
    ]);
    assert_eq!(out, "hello");
    let err = env.out(&[
        "run",
        "--rm",
        "-v",
        "shared:/data:ro",
        BASE,
        "sh",
        "-c",
        "echo x > /data/g",
    ]);
    assert!(!err.status.success(), ":ro refuses writes");
    assert_eq!(env.volume_names(), ["shared"]);
    assert_eq!(env.ok(&["volume", "rm", "shared"]), "shared");
    assert!(env.volume_names().is_empty());
    assert_eq!(
        env.fails(&["volume", "rm", "shared"]),
        "error: get shared: no such volume"
    );
}

#[test]
fn rm_takes_only_anonymous_volumes() {
    needs!("busybox");
    let env = Env::new();
    env.image(
        "withvol:1",
        "FROM busybox:kiln-test\nRUN mkdir /cache && echo c > /cache/seed\nVOLUME /cache\n",
    );
    let out = env.ok(&[
        "run",
        "--rm",
        "-v",
        "keep:/keep",
        "-v",
        "/anon",
        "withvol:1",
        "sh",
        "-c",
        "cat /cache/seed; echo k > /keep/k; echo a > /anon/a",
    ]);
    assert_eq!(out, "c", "the image's VOLUME is filled from the image");
    assert_eq!(
        env.volume_names(),
        ["keep"],
        "--rm removes only anonymous volumes"
    );
    // Without --rm the anonymous volumes stay until `rm -v`; `volume prune` takes the
    // anonymous unused ones, `-a` the named ones too.
    env.ok(&["run", "--name", "c1", "withvol:1", "true"]);
    assert_eq!(env.volume_names().len(), 2);
    env.ok(&["rm", "c1"]);
    assert_eq!(env.volume_names().len(), 2, "rm without -v keeps them");
    let out = env.ok(&["volume", "prune", "-f"]);
    assert!(out.starts_with("Deleted Volumes:"), "{out}");
    assert_eq!(env.volume_names(), ["keep"]);
    env.ok(&["volume", "prune", "-f", "-a"]);
    assert!(env.volume_names().is_empty());
}

#[test]
fn a_written_file_shows_in_diff_and_ps_size() {
    needs!("busybox");
    let env = Env::new();
    let image_before = env.ok(&["inspect", BASE]);
    env.ok(&[
        "run",
        "--name",
        "wr",
        BASE,
        "sh",
        "-c",
        "head -c 300000 /dev/urandom > /root/blob",
    ]);
    assert_eq!(env.ok(&["diff", "wr"]), "C /root\nA /root/blob");
    let size = parse_size(&env.ps_size("wr"));
    assert!((size - 300_000.0).abs() <= 4096.0, "{size}");
    env.ok(&["rm", "wr"]);
    assert_eq!(
        env.ok(&["inspect", BASE]),
        image_before,
        "the image is unchanged"
    );
    let out = env.ok(&["run", "--rm", BASE, "ls", "/root"]);
    assert_eq!(out, "", "gone with its container");
}

#[test]
fn copy_up_of_a_big_file_then_commit_keeps_a_whiteout() {
    needs!("busybox");
    let env = Env::new();
    env.image(
        "big:1",
        "FROM busybox:kiln-test\nRUN head -c 52428800 /dev/zero > /big && echo x > /doomed\n",
    );
    env.ok(&[
        "run",
        "--name",
        "cu",
        "big:1",
        "sh",
        "-c",
        "printf 1 | dd of=/big bs=1 seek=100 conv=notrunc 2>/dev/null; rm /doomed",
    ]);
    let size = parse_size(&env.ps_size("cu"));
    assert!(
        (52_428_800.0..52_428_800.0 + 4096.0).contains(&size),
        "one byte changed copies the whole file up: {size}"
    );
    assert_eq!(env.ok(&["diff", "cu"]), "C /big\nD /doomed");
    let id = env.ok(&[
        "commit",
        "-m",
        "one byte",
        "--change",
        "ENV STATE=committed",
        "cu",
        "committed:1",
    ]);
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let hist = env.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}|{{.Comment}}",
        "committed:1",
    ]);
    assert!(
        hist.lines().next().unwrap().ends_with("|one byte"),
        "{hist}"
    );
    // A fresh container of the committed image: the whiteout hides /doomed, the change is
    // there, and the config change applies.
    let out = env.ok(&[
        "run",
        "--rm",
        "committed:1",
        "sh",
        "-c",
        "ls /doomed 2>&1; dd if=/big bs=1 skip=100 count=1 2>/dev/null; echo; echo $STATE",
    ]);
    assert_eq!(out, "ls: /doomed: No such file or directory\n1\ncommitted");
}

#[test]
fn containers_share_image_layers_and_system_df_adds_up() {
    needs!("busybox");
    let env = Env::new();
    env.image(
        "fat:1",
        "FROM busybox:kiln-test\nRUN head -c 20000000 /dev/urandom > /payload\n",
    );
    // The first container unpacks the image's layers into their (shared) snapshots.
    env.ok(&["run", "--rm", "fat:1", "true"]);
    let before = du(&env.root());
    env.ok(&[
        "run",
        "--name",
        "ca",
        "fat:1",
        "sh",
        "-c",
        "head -c 100000 /dev/zero > /a",
    ]);
    env.ok(&[
        "run",
        "--name",
        "cb",
        "fat:1",
        "sh",
        "-c",
        "head -c 100000 /dev/zero > /b",
    ]);
    let grown = du(&env.root()) - before;
    // Two writable layers of 100 kB, plus their state, logs and directories.
    assert!(
        (200_000..400_000).contains(&grown),
        "the store grew by {grown} bytes for two containers"
    );
    env.ok(&["volume", "create", "vol"]);
    env.ok(&[
        "run",
        "--rm",
        "-v",
        "vol:/v",
        BASE,
        "sh",
        "-c",
        "head -c 50000 /dev/zero > /v/f",
    ]);
    let df = env.ok(&["system", "df"]);
    let lines: Vec<&str> = df.lines().collect();
    assert!(lines[0].starts_with("TYPE            TOTAL     ACTIVE    SIZE      RECLAIMABLE"));
    let row = |name: &str| -> Vec<String> {
        let l = lines.iter().find(|l| l.starts_with(name)).unwrap();
        l[16..].split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(row("Images")[0], "2");
    assert_eq!(row("Containers")[..2], ["2", "0"]);
    assert_eq!(row("Local Volumes")[..2], ["1", "0"]);
    let total: f64 = ["Images", "Containers", "Local Volumes", "Build Cache"]
        .iter()
        .map(|r| parse_size(&row(r)[2]))
        .sum();
    let real = du(&env.root()) as f64;
    assert!(
        (total - real).abs() / real < 0.01,
        "system df says {total} bytes, du -sb {real}:\n{df}"
    );
}

#[test]
fn rmi_refuses_an_image_a_container_uses() {
    needs!("busybox");
    let env = Env::new();
    env.image("app:1", "FROM busybox:kiln-test\nRUN echo app > /app\n");
    env.ok(&["run", "--name", "user", "app:1", "true"]);
    let err = env.fails(&["rmi", "app:1"]);
    assert!(
        err.starts_with("error: conflict: unable to remove repository reference \"app:1\" (must force) - container "),
        "{err}"
    );
    assert!(env.ok(&["images", "-q"]).lines().count() == 2);
    env.ok(&["rm", "user"]);
    let out = env.ok(&["rmi", "app:1"]);
    assert!(out.starts_with("Untagged: app:1"), "{out}");
    assert!(out.contains("Deleted: sha256:"), "{out}");
    // The base is untouched and still runs.
    assert_eq!(env.ok(&["run", "--rm", BASE, "echo", "ok"]), "ok");
    assert_eq!(env.fails(&["rmi", "app:1"]), "error: No such image: app:1");
}
