//! Platforms (`os/arch[/variant]`): one normalisation and one index matcher, both
//! following containerd's `platforms` package (`Normalize` and `Only`), which is what
//! Docker and BuildKit use to pick an image out of an index.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Arch, Descriptor, Os, PlatformBuilder};
use serde::Serialize;

/// A platform string that is not `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {input:?}: {reason} (expected os/arch[/variant], e.g. linux/arm64)")]
pub struct PlatformError {
    /// The rejected input.
    pub input: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// A target platform, always normalised: `linux/amd64`, `linux/arm64`, `linux/arm/v7`.
///
/// The fields are private so that every value went through [`Platform::new`]'s
/// normalisation: `arm64/v8` is `arm64`, `x86_64` is `amd64`, `arm` is `arm/v7`.
/// It serialises as `{"os", "architecture"[, "variant"]}`, in that order, because
/// the build graph's definition digests cover it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Platform {
    os: String,
    architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

impl Platform {
    /// The platform `os/arch[/variant]`, normalised as containerd's `Normalize`:
    /// lowercase; `macos` is `darwin`; `x86_64`/`x86-64` are `amd64` (and `amd64/v1`
    /// is `amd64`); `i386` is `386`; `aarch64` is `arm64` (and `arm64/v8` is `arm64`);
    /// `armhf` is `arm/v7`, `armel` is `arm/v6`; `arm` without a variant is `arm/v7`,
    /// and `arm/N` is `arm/vN`.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = match os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let mut variant = variant.unwrap_or("").to_ascii_lowercase();
        let architecture = match architecture.to_ascii_lowercase().as_str() {
            "i386" | "i686" => {
                variant.clear();
                "386".to_owned()
            }
            "x86_64" | "x86-64" | "amd64" => {
                if variant == "v1" {
                    variant.clear();
                }
                "amd64".to_owned()
            }
            "aarch64" | "arm64" => {
                if variant == "8" || variant == "v8" {
                    variant.clear();
                }
                "arm64".to_owned()
            }
            "armhf" => {
                variant = "v7".to_owned();
                "arm".to_owned()
            }
            "armel" => {
                variant = "v6".to_owned();
                "arm".to_owned()
            }
            "arm" => {
                match variant.as_str() {
                    "" | "7" => variant = "v7".to_owned(),
                    "5" | "6" | "8" => variant.insert(0, 'v'),
                    _ => {}
                }
                "arm".to_owned()
            }
            other => other.to_owned(),
        };
        Platform {
            os,
            architecture,
            variant: (!variant.is_empty()).then_some(variant),
        }
    }

    /// Parses `os/arch[/variant]` and normalises it (see [`Platform::new`]).
    pub fn parse(input: &str) -> Result<Platform, PlatformError> {
        let bad = |reason| PlatformError {
            input: input.to_owned(),
            reason,
        };
        let parts: Vec<&str> = input.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad("wrong number of components"));
        }
        if parts.iter().any(|p| {
            !p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }) {
            return Err(bad("unexpected characters"));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }

    /// The platform kiln runs on: Linux, with this build's architecture.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform::new("linux", arch, None)
    }

    /// The operating system (`linux`).
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The CPU architecture in Go's names (`amd64`, `arm64`, `arm`).
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The CPU variant (`v7`), if any: never `v8` for `arm64` nor `v1` for `amd64`.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// The same platform as oci-spec's type (for manifests and index entries).
    pub fn to_oci(&self) -> oci_spec::image::Platform {
        let mut b = PlatformBuilder::default()
            .architecture(Arch::from(self.architecture.as_str()))
            .os(Os::from(self.os.as_str()));
        if let Some(v) = &self.variant {
            b = b.variant(v.clone());
        }
        b.build()
            .expect("architecture and os, the only required fields, are set")
    }

    /// The platform of an index entry, normalised; `None` for entries without one
    /// (attestations, artifacts).
    pub fn of(descriptor: &Descriptor) -> Option<Platform> {
        descriptor.platform().as_ref().map(Platform::from)
    }

    /// The platforms an image for this one may be, best first (containerd's
    /// `platforms.Only`): this platform, then lower variants that run on it
    /// (`arm/v7` also takes `arm/v6` and `arm/v5`; `arm64/v8.2` takes `v8.1` and `v8`;
    /// `amd64/v3` takes `v2` and `amd64`), then the 32-bit relative (`amd64` takes
    /// `386`, `arm64` takes `arm/v8` down to `arm/v5`).
    pub fn compatible(&self) -> Vec<Platform> {
        let mut out = vec![self.clone()];
        let with = |arch: &str, variant: Option<&str>| Platform::new(&self.os, arch, variant);
        let version = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        let variant = self.variant.as_deref().unwrap_or("");
        match self.architecture.as_str() {
            "amd64" => {
                if let Some(n) = version(variant).filter(|n| *n > 1) {
                    out.extend((1..n).rev().map(|k| with("amd64", Some(&format!("v{k}")))));
                }
                out.push(with("386", None));
            }
            "arm" => {
                if let Some(n) = version(variant).filter(|n| *n > 5) {
                    out.extend((5..n).rev().map(|k| with("arm", Some(&format!("v{k}")))));
                }
            }
            "arm64" => {
                let variant = if variant.is_empty() { "v8" } else { variant };
                let (major, minor) = match variant.split_once('.') {
                    Some((major, minor)) => (version(major), minor.parse::<u32>().ok()),
                    None => (version(variant), Some(0)),
                };
                if let (Some(mut major), Some(mut minor)) = (major.filter(|m| *m >= 8), minor) {
                    let name = |major: u32, minor: u32| match minor {
                        0 => format!("v{major}"),
                        m => format!("v{major}.{m}"),
                    };
                    if major == 9 {
                        out.extend((0..minor).rev().map(|m| with("arm64", Some(&name(9, m)))));
                        // v9.0 diverged from v8.5: v9.x runs what v8.(x+5) runs.
                        minor += 5;
                        major = 8;
                        out.push(with("arm64", Some(&name(8, minor))));
                    }
                    out.extend(
                        (0..minor)
                            .rev()
                            .map(|m| with("arm64", Some(&name(major, m)))),
                    );
                }
                let arm = if variant.starts_with("v8.") || variant.starts_with("v9.") {
                    "v8"
                } else {
                    variant
                };
                out.extend(with("arm", Some(arm)).compatible());
            }
            _ => {}
        }
        out.dedup();
        out
    }

    /// Whether an image for `other` serves this platform (it is one of
    /// [`Platform::compatible`]).
    pub fn matches(&self, other: &Platform) -> bool {
        self.compatible().contains(other)
    }

    /// The entry of an index for this platform: the first entry for the best of
    /// [`Platform::compatible`]; `None` if no entry serves it. Entries without a
    /// platform are skipped (attestations, artifacts).
    pub fn pick<'a>(&self, manifests: &'a [Descriptor]) -> Option<&'a Descriptor> {
        let entries: Vec<(Platform, &Descriptor)> = manifests
            .iter()
            .filter_map(|d| Some((Platform::of(d)?, d)))
            .collect();
        self.compatible()
            .iter()
            .find_map(|want| entries.iter().find(|(p, _)| p == want).map(|(_, d)| *d))
    }
}

impl Default for Platform {
    /// `linux/amd64`, the platform most images are published for.
    fn default() -> Platform {
        Platform::new("linux", "amd64", None)
    }
}

impl From<&oci_spec::image::Platform> for Platform {
    fn from(p: &oci_spec::image::Platform) -> Platform {
        Platform::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref(),
        )
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        Platform::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ImageIndex;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn normalises_as_containerd() {
        for (input, shown) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/i386", "linux/386"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/aarch64/v8", "linux/arm64"),
            ("linux/arm64/v8.2", "linux/arm64/v8.2"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("Linux/ARM64", "linux/arm64"),
            ("macos/arm64", "darwin/arm64"),
            ("windows/amd64", "windows/amd64"),
            ("linux/riscv64", "linux/riscv64"),
        ] {
            assert_eq!(p(input).to_string(), shown, "{input}");
            assert_eq!(p(shown), p(input), "{input}");
        }
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64", ""] {
            let err = Platform::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid platform"), "{bad}: {err}");
        }
        assert_eq!(p("linux/arm64/v8").variant(), None);
        assert_eq!(p("linux/arm").variant(), Some("v7"));
        assert_eq!(Platform::host().os(), "linux");
        assert_eq!(Platform::default().to_string(), "linux/amd64");
    }

    #[test]
    fn serialises_for_definition_digests() {
        let json = |s: &str| serde_json::to_string(&p(s)).unwrap();
        assert_eq!(
            json("linux/amd64"),
            r#"{"os":"linux","architecture":"amd64"}"#
        );
        assert_eq!(
            json("linux/arm"),
            r#"{"os":"linux","architecture":"arm","variant":"v7"}"#
        );
    }

    #[test]
    fn oci_round_trip() {
        for s in ["linux/amd64", "linux/arm/v6", "linux/arm64"] {
            assert_eq!(Platform::from(&p(s).to_oci()), p(s));
        }
    }

    #[test]
    fn compatible_platforms_best_first() {
        let c =
            |s: &str| -> Vec<String> { p(s).compatible().iter().map(|p| p.to_string()).collect() };
        assert_eq!(c("linux/amd64"), ["linux/amd64", "linux/386"]);
        assert_eq!(
            c("linux/amd64/v3"),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        assert_eq!(
            c("linux/arm/v7"),
            ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
        );
        assert_eq!(
            c("linux/arm64"),
            [
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert_eq!(
            c("linux/arm64/v8.2")[..4],
            [
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64",
                "linux/arm/v8"
            ]
        );
        assert_eq!(
            c("linux/arm64/v9.1")[..4],
            [
                "linux/arm64/v9.1",
                "linux/arm64/v9",
                "linux/arm64/v8.6",
                "linux/arm64/v8.5"
            ]
        );
        assert_eq!(c("linux/s390x"), ["linux/s390x"]);
        assert!(p("linux/arm/v7").matches(&p("linux/arm/v5")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
    }

    fn index(entries: &[&str]) -> ImageIndex {
        let manifests: Vec<String> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let digest = format!("sha256:{}", format!("{:x}", i + 1).repeat(64));
                let platform = match e.split('/').collect::<Vec<_>>().as_slice() {
                    [] | [""] => String::new(),
                    [os, arch] => format!(r#","platform":{{"os":"{os}","architecture":"{arch}"}}"#),
                    [os, arch, v] => format!(
                        r#","platform":{{"os":"{os}","architecture":"{arch}","variant":"{v}"}}"#
                    ),
                    _ => unreachable!(),
                };
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"{digest}"{platform}}}"#
                )
            })
            .collect();
        serde_json::from_str(&format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            manifests.join(",")
        ))
        .unwrap()
    }

    /// Picks from an index with `entries`; the answer is the entry's position.
    fn pick(entries: &[&str], want: &str) -> Option<usize> {
        let idx = index(entries);
        let d = p(want).pick(idx.manifests())?;
        idx.manifests().iter().position(|m| m == d)
    }

    #[test]
    fn picks_like_containerd() {
        let multi = [
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
            "",
            "linux/amd64",
            "windows/amd64",
        ];
        assert_eq!(pick(&multi, "linux/amd64"), Some(4));
        assert_eq!(pick(&multi, "linux/x86_64"), Some(4));
        assert_eq!(pick(&multi, "linux/arm64"), Some(2));
        assert_eq!(pick(&multi, "linux/arm64/v8"), Some(2));
        assert_eq!(pick(&multi, "linux/aarch64"), Some(2));
        assert_eq!(pick(&multi, "linux/arm/v7"), Some(1));
        assert_eq!(pick(&multi, "linux/arm"), Some(1));
        assert_eq!(pick(&multi, "linux/armhf"), Some(1));
        assert_eq!(pick(&multi, "linux/arm/v6"), Some(0));
        assert_eq!(pick(&multi, "windows/amd64"), Some(5));
        assert_eq!(pick(&multi, "linux/s390x"), None);
        assert_eq!(pick(&multi, "linux/arm/v5"), None);

        // The bug: an entry without variant serves `arm64/v8`, and `arm64/v8` serves
        // `arm64` and `aarch64`.
        let plain = ["linux/amd64", "linux/arm64"];
        assert_eq!(pick(&plain, "linux/arm64/v8"), Some(1));
        assert_eq!(pick(&["linux/aarch64/v8"], "linux/arm64"), Some(0));
        // The variant counts: arm/v6 does not run an arm/v7 image, and `arm` is v7.
        assert_eq!(pick(&["linux/arm/v7"], "linux/arm/v6"), None);
        assert_eq!(
            pick(&["linux/arm/v6", "linux/arm"], "linux/arm/v7"),
            Some(1)
        );
        // Lower variants and 32-bit relatives, when nothing better is there.
        assert_eq!(
            pick(&["linux/arm/v5", "linux/arm/v6"], "linux/arm/v7"),
            Some(1)
        );
        assert_eq!(pick(&["linux/386"], "linux/amd64"), Some(0));
        assert_eq!(
            pick(&["linux/arm/v7", "linux/arm64"], "linux/arm64"),
            Some(1)
        );
        // The first of equals wins.
        assert_eq!(
            pick(&["linux/amd64", "linux/x86_64"], "linux/amd64"),
            Some(0)
        );
    }
}
