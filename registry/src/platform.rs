//! Platforms (`os/arch[/variant]`) and picking one image out of an index.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Descriptor;

use crate::error::{RegistryError, Result};

/// A target platform, e.g. `linux/amd64` or `linux/arm64/v8`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture in Go's names (`amd64`, `arm64`, `arm`).
    pub architecture: String,
    /// CPU variant (`v7`, `v8`), if any.
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`.
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl Platform {
    /// Parse `os/arch[/variant]`. Common aliases are normalised as
    /// containerd does (`x86_64` → `amd64`, `aarch64` → `arm64`,
    /// `arm64/v8` → `arm64`).
    pub fn parse(input: &str) -> Result<Platform> {
        let bad = |reason: &str| RegistryError::InvalidPlatform {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = input.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad("wrong number of components"));
        }
        if parts.iter().any(|p| {
            !p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        }) {
            return Err(bad("unexpected characters"));
        }
        Ok(Platform::normalized(
            parts[0],
            parts[1],
            parts.get(2).map(|s| s.to_string()),
        ))
    }

    /// The platform kiln runs on (Linux, with this build's architecture).
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform::normalized("linux", arch, None)
    }

    fn normalized(os: &str, arch: &str, variant: Option<String>) -> Platform {
        let os = os.to_ascii_lowercase();
        let mut variant = variant.map(|v| v.to_ascii_lowercase());
        let architecture = match arch.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".to_owned(),
            "aarch64" => "arm64".to_owned(),
            "i386" | "i686" => "386".to_owned(),
            "armhf" => {
                variant.get_or_insert_with(|| "v7".to_owned());
                "arm".to_owned()
            }
            "armel" => {
                variant.get_or_insert_with(|| "v6".to_owned());
                "arm".to_owned()
            }
            other => other.to_owned(),
        };
        if architecture == "arm64" && variant.as_deref() == Some("v8") {
            variant = None;
        }
        // 32-bit arm without a variant means v7 (containerd's default).
        if architecture == "arm" && variant.is_none() {
            variant = Some("v7".to_owned());
        }
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// Whether an index entry's platform serves this platform.
    fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        match (&self.variant, &other.variant) {
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// Pick the entry of an index for this platform: entries whose platform
    /// matches, preferring an exact variant match; `None` if there is none.
    /// Entries without a platform are skipped (attestations, artifacts).
    pub fn pick<'a>(&self, manifests: &'a [Descriptor]) -> Option<&'a Descriptor> {
        let mut best: Option<(&Descriptor, bool)> = None;
        for d in manifests {
            let Some(p) = Platform::of(d) else { continue };
            if !self.matches(&p) {
                continue;
            }
            let exact = p.variant == self.variant;
            match best {
                Some((_, true)) => {}
                Some((_, false)) if !exact => {}
                _ => best = Some((d, exact)),
            }
        }
        best.map(|(d, _)| d)
    }

    /// The platform of an index entry, if it has one.
    pub(crate) fn of(d: &Descriptor) -> Option<Platform> {
        let p = d.platform().as_ref()?;
        Some(Platform::normalized(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().clone(),
        ))
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
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self> {
        Platform::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ImageIndex;

    fn index() -> ImageIndex {
        let d = |n: u8| format!("sha256:{}", format!("{n:x}").repeat(64));
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"{}","platform":{{"architecture":"arm","os":"linux","variant":"v6"}}}},
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"{}","platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"{}","platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"{}","annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}},
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"{}","platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"{}","platform":{{"architecture":"amd64","os":"windows","os.version":"10.0"}}}}
            ]}}"#,
            d(1),
            d(2),
            d(3),
            d(4),
            d(5),
            d(6)
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn parse_and_display() {
        for (input, shown) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm", "linux/arm/v7"),
            ("Linux/ARM64", "linux/arm64"),
            ("windows/amd64", "windows/amd64"),
        ] {
            assert_eq!(Platform::parse(input).unwrap().to_string(), shown);
        }
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Platform::default().to_string(), "linux/amd64");
    }

    #[test]
    fn pick_from_index() {
        let idx = index();
        let m = idx.manifests();
        let pick = |p: &str| {
            Platform::parse(p)
                .unwrap()
                .pick(m)
                .map(|d| d.digest().to_string().chars().nth(8).unwrap())
        };
        assert_eq!(pick("linux/amd64"), Some('5'));
        assert_eq!(pick("linux/arm64"), Some('3'));
        assert_eq!(pick("linux/arm64/v8"), Some('3'));
        assert_eq!(pick("linux/arm/v7"), Some('2'));
        assert_eq!(pick("linux/arm/v6"), Some('1'));
        assert_eq!(pick("linux/arm"), Some('2')); // arm means arm/v7
        assert_eq!(pick("windows/amd64"), Some('6'));
        assert_eq!(pick("linux/s390x"), None);
    }
}
