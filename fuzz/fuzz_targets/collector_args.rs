//! Fuzzes the getopt-style `args` string of the collectors
//! (`getinfo_users::args`: the shell-like word splitter and the getopts
//! parsing). Nothing may panic; a selected user name is never empty and
//! never holds `:`, `\n` or NUL.
#![no_main]

use getinfo_users::args::{parse_args, split_words};
use getinfo_users::Selection;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = split_words(text);
    if let Ok(Selection::One(name)) = parse_args(text) {
        assert!(!name.is_empty() && !name.contains([':', '\n', '\0']), "bad name {name:?}");
    }
});
