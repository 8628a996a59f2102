//! BuildKit's own parser cases (`shared/testdata/buildkit/testfiles*`), read in place:
//! every positive case must dump byte for byte as `result`, every negative one must fail.

use std::fs;
use std::path::PathBuf;

use kiln_frontend::parser;

/// The `shared/testdata/buildkit` folder: `$KILN_SHARED_DIR`, or the first ancestor of
/// this crate that has `shared/testdata/buildkit`.
fn buildkit_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_SHARED_DIR") {
        return PathBuf::from(dir).join("testdata/buildkit");
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("shared/testdata/buildkit"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "shared/testdata/buildkit not found above {}; set KILN_SHARED_DIR",
                here.display()
            )
        })
}

fn cases(sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(buildkit_dir().join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn positive_cases_dump_exactly() {
    let cases = cases("testfiles");
    assert!(
        cases.len() >= 30,
        "expected BuildKit's cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let src = fs::read(case.join("Dockerfile")).unwrap();
        let src = String::from_utf8_lossy(&src);
        let want = fs::read_to_string(case.join("result")).unwrap();
        match parser::parse(&src) {
            Ok(ast) => {
                let got = format!("{}\n", ast.dump());
                if got != want {
                    failures.push(format!(
                        "{}:\n--- want\n{want}--- got\n{got}",
                        case.display()
                    ));
                }
                // The dump must be stable through a second parse of the same text.
                assert_eq!(parser::parse(&src).unwrap().dump(), ast.dump());
            }
            Err(e) => failures.push(format!("{}: parse error {e:?}", case.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn negative_cases_fail() {
    let cases = cases("testfiles-negative");
    assert!(!cases.is_empty());
    for case in &cases {
        let src = fs::read_to_string(case.join("Dockerfile")).unwrap();
        assert!(
            parser::parse(&src).is_err(),
            "{} parsed but must fail",
            case.display()
        );
    }
}
