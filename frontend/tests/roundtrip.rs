//! Property: parse -> write back -> parse gives the same tree (compared by its dump), for
//! generated Dockerfiles with flags, quotes, continuations, comments and heredocs.

use kiln_frontend::parser;
use proptest::prelude::*;

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_./-]{1,8}",
        Just("$HOME".to_string()),
        Just("${A:-b}".to_string()),
        Just("\"quoted word\"".to_string()),
        Just("'single'".to_string()),
        Just("a\\ b".to_string()),
        Just("k=v".to_string()),
        Just("x=\"y z\"".to_string()),
        Just("[\"json\", \"form\"]".to_string()),
        Just("&&".to_string()),
    ]
}

fn instruction() -> impl Strategy<Value = String> {
    let kw = prop_oneof![
        Just("RUN"),
        Just("run"),
        Just("COPY"),
        Just("ADD"),
        Just("ENV"),
        Just("LABEL"),
        Just("ARG"),
        Just("CMD"),
        Just("ENTRYPOINT"),
        Just("WORKDIR"),
        Just("USER"),
        Just("EXPOSE"),
        Just("VOLUME"),
        Just("ONBUILD RUN"),
        Just("HEALTHCHECK CMD"),
        Just("SHELL"),
        Just("STOPSIGNAL"),
        Just("MAINTAINER"),
        Just("FROM"),
        Just("BOGUS"),
    ];
    let flag = prop_oneof![
        Just("".to_string()),
        Just("--from=a ".to_string()),
        Just("--chown=1:1 --link ".to_string()),
        Just("--mount=type=cache,target=/c ".to_string()),
    ];
    (
        kw,
        flag,
        prop::collection::vec(word(), 0..5),
        0..3usize,
        any::<bool>(),
    )
        .prop_map(|(kw, flag, words, cont, heredoc)| {
            let mut line = format!("{kw} {flag}");
            for (i, w) in words.iter().enumerate() {
                line.push_str(w);
                line.push(' ');
                if i < cont {
                    line.push_str("\\\n  ");
                    if i == 0 {
                        line.push_str("# inside\n  ");
                    }
                }
            }
            if heredoc && matches!(kw, "RUN" | "COPY" | "ADD" | "run") {
                line.push_str("<<EOF /dst\nbody $x\n  more\nEOF");
            }
            line
        })
}

fn dockerfile() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just(""),
            Just("# syntax=docker/dockerfile:1\n"),
            Just("# escape=\\\n\n")
        ],
        prop::collection::vec(instruction(), 1..8),
    )
        .prop_map(|(head, lines)| {
            let mut s = head.to_string();
            s.push_str("FROM base AS b\n");
            for l in lines {
                s.push_str(&l);
                s.push('\n');
                s.push_str("# comment\n\n");
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn parse_write_parse_is_stable(src in dockerfile()) {
        if let Ok(ast) = parser::parse(&src) {
            let written = ast.to_dockerfile();
            let again = parser::parse(&written)
                .unwrap_or_else(|e| panic!("re-parse failed: {e:?}\n{written}"));
            prop_assert_eq!(again.dump(), ast.dump());
            prop_assert_eq!(again.children.len(), ast.children.len());
            for (a, b) in again.children.iter().zip(&ast.children) {
                prop_assert_eq!(&a.heredocs, &b.heredocs);
            }
        }
    }

    #[test]
    fn parser_never_panics(src in "(?s).{0,200}") {
        let _ = parser::parse(&src).map(|a| a.dump());
    }
}
