//! A build's base images resolved at once.
//!
//! The frontend's conversion resolves each stage's `FROM` as it reaches it, one after
//! the other: a Dockerfile of several bases waited for the sum of its registries'
//! round trips (manifest, config), where BuildKit resolves them side by side and waits
//! for the slowest. Before the conversion, [`resolve_at_once`] finds which bases it will
//! ask for (a conversion that resolves nothing asks for the same ones: which bases a
//! Dockerfile uses depends on its arguments, not on the bases' configs) and resolves
//! them each on a thread of its own; the conversion then finds them resolved. A base
//! that fails is not asked for again: the conversion reports its error at its `FROM`.

use std::sync::Mutex;

use kiln_frontend::convert::{self, ConvertOptions, ImageResolver, ResolvedImage};
use kiln_frontend::instructions::{Dockerfile, Instruction};
use kiln_ops::Platform;

/// A resolver that knows no images and notes what it was asked for, once each.
#[derive(Default)]
struct Asked(Mutex<Vec<(String, Platform)>>);

impl ImageResolver for Asked {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String> {
        let mut asked = self.0.lock().expect("asked lock");
        let this = (reference.to_owned(), platform.clone());
        if !asked.contains(&this) {
            asked.push(this);
        }
        Ok(None)
    }
}

/// Calls `resolve` for each base the conversion of `df` with `opts` will ask for, all
/// at once when there are several, and returns when all are done.
pub fn resolve_at_once(
    df: &Dockerfile,
    opts: &ConvertOptions,
    resolve: &(dyn Fn(&str, &Platform) + Sync),
) {
    // One stage, at most one base: no conversion twice for nothing.
    if df.stages.len() < 2 {
        return;
    }
    let asked = Asked::default();
    // An error here is the conversion's to report.
    let _ = convert::convert(df, opts, &asked);
    let bases = asked.0.into_inner().expect("asked lock");
    if bases.len() < 2 {
        return;
    }
    std::thread::scope(|s| {
        for (reference, platform) in &bases {
            let spawned = std::thread::Builder::new()
                .name("kiln-resolve".into())
                .spawn_scoped(s, move || resolve(reference, platform));
            // Without a thread, the conversion resolves it in its turn.
            drop(spawned);
        }
    });
}

/// Whether a build of `df` reads its bases' filesystems: a stage RUNs, or COPYs or ADDs
/// without `--link` (onto its base, or from a stage). The build then fetches its bases'
/// new layers beside their configs (see [`crate::images::ImageStore::with_prefetch`]).
/// The layers of a Dockerfile of `FROM`, `COPY --link` and `CMD` stay in their registry
/// until an export or a run needs them.
pub fn reads_bases(df: &Dockerfile) -> bool {
    df.stages
        .iter()
        .flat_map(|s| &s.commands)
        .any(|c| match &c.instruction {
            Instruction::Run(_) => true,
            Instruction::Copy(c) => !c.link,
            Instruction::Add(a) => !a.link,
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;
    use std::time::Duration;

    /// Every base is resolved while the others are: each call waits until all are in
    /// (a resolver called one base after the other would give up waiting, and the test
    /// then fails on how many were in at once).
    #[test]
    fn every_base_is_resolved_while_the_others_are() {
        let src = "ARG TAG=1\n\
                   FROM registry.test/a:${TAG} AS a\n\
                   FROM registry.test/b AS b\n\
                   COPY --from=a / /a\n\
                   FROM a AS again\n\
                   FROM --platform=linux/arm64 registry.test/c\n\
                   COPY --from=b / /b\n\
                   COPY --from=again / /again\n";
        let (_, df) = kiln_frontend::load(src).unwrap();
        let opts = ConvertOptions {
            target_platform: Platform::parse("linux/amd64").unwrap(),
            ..ConvertOptions::default()
        };
        let state = Mutex::new((Vec::new(), 0usize, 0usize));
        let changed = Condvar::new();
        let resolve = |reference: &str, platform: &Platform| {
            let mut s = state.lock().unwrap();
            s.0.push(format!("{reference} {platform}"));
            s.1 += 1;
            s.2 = s.2.max(s.1);
            changed.notify_all();
            let (mut s, _) = changed
                .wait_timeout_while(s, Duration::from_secs(10), |s| s.0.len() < 3)
                .unwrap();
            s.1 -= 1;
        };
        resolve_at_once(&df, &opts, &resolve);
        let (mut called, _, most) = state.into_inner().unwrap();
        called.sort();
        assert_eq!(
            called,
            [
                "registry.test/a:1 linux/amd64",
                "registry.test/b linux/amd64",
                "registry.test/c linux/arm64"
            ]
        );
        assert_eq!(most, 3, "all three at once");
    }

    #[test]
    fn one_base_is_left_to_the_conversion() {
        let (_, df) = kiln_frontend::load("FROM registry.test/a\nFROM registry.test/a\n").unwrap();
        let called = Mutex::new(0);
        resolve_at_once(&df, &ConvertOptions::default(), &|_, _| {
            *called.lock().unwrap() += 1
        });
        assert_eq!(*called.lock().unwrap(), 0);
    }

    #[test]
    fn a_build_reads_its_bases_when_a_stage_runs_copies_or_adds() {
        let reads = |src: &str| reads_bases(&kiln_frontend::load(src).unwrap().1);
        assert!(reads("FROM a\nRUN true\n"));
        assert!(reads("FROM a AS b\nFROM c\nCOPY --from=b /x /x\n"));
        assert!(reads("FROM a\nADD f /f\n"));
        assert!(!reads("FROM a\nLABEL x=1\nCMD [\"sh\"]\n"));
        assert!(!reads("FROM a\nCOPY --link f /f\nADD --link g /g\n"));
        assert!(!reads("FROM a AS b\nFROM b\nENV X=1\n"));
    }
}
