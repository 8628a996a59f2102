//! Fuzzes shell word expansion: no input may panic, with either escape character.
#![no_main]

use std::collections::BTreeMap;

use kiln_frontend::shell::Lex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    let mut env = BTreeMap::new();
    env.insert("A".to_string(), "a b".to_string());
    env.insert("EMPTY".to_string(), String::new());
    env.insert("X".to_string(), "x*y?".to_string());
    for escape in ['\\', '`'] {
        let mut lex = Lex::new(escape);
        let _ = lex.process_word(&src, &env);
        let _ = lex.process_words(&src, &env);
        lex.raw_quotes = true;
        lex.raw_escapes = true;
        let _ = lex.process_words(&src, &env);
    }
});
