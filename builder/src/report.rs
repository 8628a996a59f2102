//! The cache-hit report: a summary line at the end of every build and, with
//! `--report FILE.json`, a machine-readable record of every step for CI.

use kiln_oci::Digest;
use serde::Serialize;

/// A built layer in the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReportLayer {
    /// Blob digest.
    pub digest: Digest,
    /// Blob size in bytes.
    pub size: u64,
}

/// One Dockerfile step.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReportStep {
    /// Stage name, or its index.
    pub stage: String,
    /// Dockerfile line.
    pub line: usize,
    /// The instruction as written.
    pub instruction: String,
    /// Cache key.
    pub key: Digest,
    /// Found in the cache.
    pub cached: bool,
    /// Time spent.
    pub duration_ms: u64,
    /// The layer this step added, if any.
    pub layer: Option<ReportLayer>,
    /// Why it missed the cache (`{kind, details}`), for a step that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miss: Option<kiln_cache::Miss>,
}

/// The built image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReportImage {
    /// Manifest digest.
    pub digest: Digest,
    /// Config digest (Docker's image id).
    pub config: Digest,
    /// Tags given with `-t`.
    pub tags: Vec<String>,
}

/// Totals over all steps.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Steps run or found.
    pub steps: usize,
    /// Steps found in the cache.
    pub cached: usize,
    /// Steps executed.
    pub built: usize,
    /// Bytes of layers taken from the cache.
    pub bytes_reused: u64,
    /// Bytes of layers written by this build.
    pub bytes_built: u64,
    /// Wall-clock time of the whole build.
    pub duration_ms: u64,
}

/// The report of one build.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// What was built.
    pub image: ReportImage,
    /// Every step, in Dockerfile order.
    pub steps: Vec<ReportStep>,
    /// Totals.
    pub totals: Totals,
}

impl Report {
    /// Builds the report and computes the totals.
    pub fn new(image: ReportImage, mut steps: Vec<ReportStep>, duration_ms: u64) -> Report {
        steps.sort_by(|a, b| (a.line, &a.instruction).cmp(&(b.line, &b.instruction)));
        let mut totals = Totals {
            steps: steps.len(),
            duration_ms,
            ..Totals::default()
        };
        for s in &steps {
            let bytes = s.layer.as_ref().map(|l| l.size).unwrap_or(0);
            if s.cached {
                totals.cached += 1;
                totals.bytes_reused += bytes;
            } else {
                totals.built += 1;
                totals.bytes_built += bytes;
            }
        }
        Report {
            image,
            steps,
            totals,
        }
    }

    /// The one-line human summary.
    pub fn summary(&self) -> String {
        let t = &self.totals;
        format!(
            "{} steps: {} cached, {} built; {} reused, {} new layer data; {:.2}s",
            t.steps,
            t.cached,
            t.built,
            human_bytes(t.bytes_reused),
            human_bytes(t.bytes_built),
            t.duration_ms as f64 / 1000.0
        )
    }

    /// One line per step that missed the cache, with why (for the end-of-build
    /// summary): `line 5: COPY . /app: MISS: 1 file changed: app.py (content)`.
    pub fn misses(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| {
                let m = s.miss.as_ref().filter(|m| m.kind != "no-cache")?;
                Some(format!(
                    "line {}: {}: MISS: {}",
                    s.line,
                    kiln_frontend::error::shorten(&s.instruction),
                    m.details
                ))
            })
            .collect()
    }
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(line: usize, cached: bool, size: Option<u64>) -> ReportStep {
        ReportStep {
            stage: "0".into(),
            line,
            instruction: format!("COPY {line}"),
            key: kiln_oci::digest::sha256_digest(b"k"),
            cached,
            duration_ms: 1,
            layer: size.map(|size| ReportLayer {
                digest: kiln_oci::digest::sha256_digest(b"l"),
                size,
            }),
            miss: None,
        }
    }

    #[test]
    fn totals() {
        let img = ReportImage {
            digest: kiln_oci::digest::sha256_digest(b"m"),
            config: kiln_oci::digest::sha256_digest(b"c"),
            tags: vec!["a:1".into()],
        };
        let r = Report::new(
            img,
            vec![
                step(3, false, Some(10)),
                step(2, true, Some(2048)),
                step(4, true, None),
            ],
            1500,
        );
        assert_eq!((r.totals.steps, r.totals.cached, r.totals.built), (3, 2, 1));
        assert_eq!((r.totals.bytes_reused, r.totals.bytes_built), (2048, 10));
        assert_eq!(r.steps[0].line, 2);
        assert_eq!(
            r.summary(),
            "3 steps: 2 cached, 1 built; 2.0 KiB reused, 10 B new layer data; 1.50s"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["steps"][2]["layer"], serde_json::Value::Null);
        assert_eq!(json["image"]["tags"][0], "a:1");
        // Digests are written as their sha256:<hex> strings.
        assert_eq!(json["image"]["digest"], r.image.digest.as_str());
    }
}
