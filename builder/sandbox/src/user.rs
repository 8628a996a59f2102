//! `USER` as the sandbox applies it: names looked up in the image's `/etc/passwd` and
//! `/etc/group`, supplementary groups from `/etc/group` memberships (as runc does).

use std::fs;

use kiln_fs::{SourceFs, resolve};

use crate::error::{Result, SandboxError};

/// The ids a step runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
    /// Home directory from `/etc/passwd` (for `HOME` when the image does not set it).
    pub home: Option<String>,
}

fn read_etc(fs: &dyn SourceFs, file: &str) -> String {
    resolve(fs, file, true)
        .ok()
        .and_then(|r| fs.lstat(&r))
        .and_then(|e| fs::read_to_string(e.path).ok())
        .unwrap_or_default()
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(db: &str) -> impl Iterator<Item = Passwd<'_>> {
    db.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f.get(5).copied().unwrap_or(""),
        })
    })
}

/// `(name, gid, members)` of each `/etc/group` line.
fn group_entries(db: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    db.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves a `USER` value (`name`, `uid`, `name:group`, `uid:gid`; empty is root) in the
/// tree `fs`.
pub fn resolve_user(spec: &str, fs: &dyn SourceFs) -> Result<User> {
    let spec = spec.trim();
    if spec.is_empty() {
        return resolve_user("0", fs);
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_etc(fs, "etc/passwd");
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(&passwd).find(|p| p.uid == uid),
        Err(_) => passwd_entries(&passwd).find(|p| p.name == user),
    };
    let (uid, mut gid, name, home) = match (user.parse::<u32>(), &entry) {
        (_, Some(p)) => (p.uid, p.gid, Some(p.name), Some(p.home.to_string())),
        (Ok(uid), None) => (uid, 0, None, None),
        (Err(_), None) => {
            return Err(SandboxError::UnknownUser(user.to_string()));
        }
    };
    let groups_db = read_etc(fs, "etc/group");
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match group_entries(&groups_db).find(|(n, _, _)| *n == g) {
                Some((_, gid, _)) => gid,
                None => return Err(SandboxError::UnknownGroup(g.to_string())),
            },
        };
    }
    let mut groups = Vec::new();
    if group.is_none() {
        if let Some(name) = name {
            for (_, g, members) in group_entries(&groups_db) {
                if members.contains(&name) && !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
    }
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    Ok(User {
        uid,
        gid,
        groups,
        home: home.filter(|h| !h.is_empty()),
    })
}
