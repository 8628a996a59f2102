//! Tree listings: one line per entry (type, mode, owner, size, link target, content
//! hash), to compare two root filesystems, say kiln's and buildah's.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A tree's entries by path relative to its root.
pub type Listing = BTreeMap<String, String>;

/// Lists `root`: `TYPE MODE UID:GID SIZE EXTRA` per entry, where EXTRA is a file's
/// content hash, a symlink's target or a device's `rdev`. Never mtimes.
pub fn listing(root: &Path) -> Listing {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for e in entries {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (kind, extra) = if ft.is_dir() {
                stack.push(p.clone());
                ("dir", String::new())
            } else if ft.is_symlink() {
                ("symlink", fs::read_link(&p).unwrap().display().to_string())
            } else if ft.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs::read(&p).unwrap().hash(&mut h);
                ("file", format!("{:016x}", h.finish()))
            } else {
                ("other", format!("rdev={}", m.rdev()))
            };
            let size = if ft.is_file() { m.size() } else { 0 };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(
                rel,
                format!(
                    "{kind} {:o} {}:{} {size} {extra}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            );
        }
    }
    out
}

/// The differences between two listings, one message per path, labelled with the
/// trees' names; empty when they are equal.
pub fn diff(a_name: &str, a: &Listing, b_name: &str, b: &Listing) -> Vec<String> {
    let width = a_name.len().max(b_name.len()) + 1;
    let mut out: Vec<String> = a
        .iter()
        .filter(|(p, v)| b.get(*p) != Some(v))
        .map(|(p, v)| match b.get(p) {
            Some(w) => format!(
                "{:width$} {p}: {v}\n{:width$} {p}: {w}",
                format!("{a_name}:"),
                format!("{b_name}:")
            ),
            None => format!("only in {a_name}: {p}: {v}"),
        })
        .collect();
    out.extend(
        b.iter()
            .filter(|(p, _)| !a.contains_key(*p))
            .map(|(p, v)| format!("only in {b_name}: {p}: {v}")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_see_content_mode_and_links_but_not_mtimes() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for t in [&a, &b] {
            fs::create_dir(t.path().join("d")).unwrap();
            fs::write(t.path().join("d/f"), "same").unwrap();
            fs::set_permissions(t.path().join("d"), fs::Permissions::from_mode(0o755)).unwrap();
            fs::set_permissions(t.path().join("d/f"), fs::Permissions::from_mode(0o644)).unwrap();
            std::os::unix::fs::symlink("d/f", t.path().join("l")).unwrap();
        }
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        fs::File::options()
            .write(true)
            .open(b.path().join("d/f"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(diff("a", &listing(a.path()), "b", &listing(b.path())).is_empty());

        fs::write(b.path().join("d/f"), "changed").unwrap();
        fs::set_permissions(b.path().join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(b.path().join("extra"), "").unwrap();
        fs::remove_file(b.path().join("l")).unwrap();
        let d = diff("a", &listing(a.path()), "b", &listing(b.path()));
        assert_eq!(d.len(), 4, "{d:#?}");
        assert!(
            d[0].starts_with("a: d: dir 755") && d[0].contains("\nb: d: dir 700"),
            "{d:#?}"
        );
        assert!(d[1].starts_with("a: d/f: file 644"), "{d:#?}");
        assert_eq!(
            d[2],
            "only in a: l: symlink 777 0:0 0 d/f".replace("0:0", &owner(a.path()))
        );
        assert!(d[3].starts_with("only in b: extra: file"), "{d:#?}");
    }

    fn owner(p: &Path) -> String {
        let m = fs::metadata(p).unwrap();
        format!("{}:{}", m.uid(), m.gid())
    }
}
