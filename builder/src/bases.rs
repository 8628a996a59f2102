//! A build's base images resolved at once.
//!
//! The frontend's conversion resolves each stage's `FROM` as it reaches it, one after
//! the other: a Dockerfile of several bases waited for the sum of its registries'
//! round trips (manifest, config), where BuildKit resolves them side by side and waits
//! for the slowest. Before the conversion, [`dry_run`] finds which bases it will ask for
//! (a conversion that resolves nothing asks for the same ones: which bases a Dockerfile
//! uses depends on its arguments, not on the bases' configs) and which stages the target
//! needs; [`resolve_at_once`] resolves those bases each on a thread of its own, and the
//! conversion then finds them resolved. A base that fails is not asked for again: the
//! conversion reports its error at its `FROM`.

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

/// What the conversion of a Dockerfile will ask for and use, found by converting it once
/// with a resolver that knows no images ([`dry_run`]).
#[derive(Debug, Default)]
pub struct Dry {
    /// The bases it asks for, once each, in order.
    pub bases: Vec<(String, Platform)>,
    /// The stages the target needs (their indices in the Dockerfile); `None` when not
    /// known (a Dockerfile of one stage, or one whose conversion fails): then all.
    pub stages: Option<Vec<usize>>,
}

/// Converts `df` with `opts` once, resolving nothing, to learn what the real conversion
/// will ask for and which stages the target needs. A Dockerfile of one stage has at most
/// one base and needs its one stage: no conversion twice for nothing.
pub fn dry_run(df: &Dockerfile, opts: &ConvertOptions) -> Dry {
    if df.stages.len() < 2 {
        return Dry::default();
    }
    let asked = Asked::default();
    // An error here is the real conversion's to report.
    let plan = convert::convert(df, opts, &asked).ok();
    Dry {
        bases: asked.0.into_inner().expect("asked lock"),
        stages: plan.map(|p| p.stages.iter().map(|s| s.index).collect()),
    }
}

/// Calls `resolve` for each of `bases` ([`Dry::bases`]), all at once when there are
/// several, and returns when all are done.
pub fn resolve_at_once(bases: &[(String, Platform)], resolve: &(dyn Fn(&str, &Platform) + Sync)) {
    if bases.len() < 2 {
        return;
    }
    std::thread::scope(|s| {
        for (reference, platform) in bases {
            let spawned = std::thread::Builder::new()
                .name("kiln-resolve".into())
                .spawn_scoped(s, move || resolve(reference, platform));
            // Without a thread, the conversion resolves it in its turn.
            drop(spawned);
        }
    });
}

/// Whether a build of `df` reads its bases' filesystems: one of the `stages` it needs
/// ([`Dry::stages`]; `None`: every stage) RUNs, or COPYs or ADDs without `--link` (onto
/// its base, or from a stage). The build then fetches its bases' new layers beside their
/// configs (see [`crate::images::ImageStore::with_prefetch`]). The layers of a
/// Dockerfile of `FROM`, `COPY --link` and `CMD` stay in their registry until an export
/// or a run needs them, and so do those of a target whose RUNs are in stages it does not
/// need.
pub fn reads_bases(df: &Dockerfile, stages: Option<&[usize]>) -> bool {
    df.stages
        .iter()
        .enumerate()
        .filter(|(i, _)| stages.is_none_or(|needed| needed.contains(i)))
        .flat_map(|(_, s)| &s.commands)
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
        let dry = dry_run(&df, &opts);
        assert_eq!(dry.stages, Some(vec![0, 1, 2, 3]));
        resolve_at_once(&dry.bases, &resolve);
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
        let dry = dry_run(&df, &ConvertOptions::default());
        resolve_at_once(&dry.bases, &|_, _| *called.lock().unwrap() += 1);
        assert_eq!(*called.lock().unwrap(), 0);
    }

    /// The bases' layers are fetched ahead only when a stage the target needs reads a
    /// filesystem: not for a target of `COPY --link` whose Dockerfile RUNs elsewhere.
    #[test]
    fn a_build_reads_its_bases_only_for_the_stages_its_target_needs() {
        let src = "FROM registry.test/a AS build\nRUN make\n\
                   FROM registry.test/b AS meta\nCOPY --link x /x\n\
                   FROM registry.test/c\nCOPY --link --from=build /out /out\n";
        let (_, df) = kiln_frontend::load(src).unwrap();
        let dry = |target: Option<&str>| {
            dry_run(
                &df,
                &ConvertOptions {
                    target: target.map(str::to_owned),
                    ..ConvertOptions::default()
                },
            )
        };
        let meta = dry(Some("meta"));
        assert_eq!(meta.stages, Some(vec![1]));
        assert_eq!(meta.bases.len(), 1, "{:?}", meta.bases);
        assert!(!reads_bases(&df, meta.stages.as_deref()));
        // The last stage needs `build`, which RUNs.
        let last = dry(None);
        let mut needed = last.stages.clone().unwrap();
        needed.sort();
        assert_eq!(needed, [0, 2]);
        assert!(reads_bases(&df, last.stages.as_deref()));
        // Every stage, when the needed ones are not known.
        assert!(reads_bases(&df, None));
    }

    #[test]
    fn a_build_reads_its_bases_when_a_stage_runs_copies_or_adds() {
        let reads = |src: &str| reads_bases(&kiln_frontend::load(src).unwrap().1, None);
        assert!(reads("FROM a\nRUN true\n"));
        assert!(reads("FROM a AS b\nFROM c\nCOPY --from=b /x /x\n"));
        assert!(reads("FROM a\nADD f /f\n"));
        assert!(!reads("FROM a\nLABEL x=1\nCMD [\"sh\"]\n"));
        assert!(!reads("FROM a\nCOPY --link f /f\nADD --link g /g\n"));
        assert!(!reads("FROM a AS b\nFROM b\nENV X=1\n"));
    }
}
