//! Fuzzes the getopt-style `args` of the collectors: the shared parser in
//! `basicagent_collector_kit` (`request_args` on the raw request bytes,
//! `split_args`, `parse_opts`), which every getinfo collector uses.
//! Nothing may panic; words quoted back (`'...'`, `'\''` for a quote) and
//! joined with spaces must split into the same words.
#![deny(clippy::undocumented_unsafe_blocks)]
#![no_main]

use basicagent_collector_kit::args::{parse_opts, split_args};
use basicagent_collector_kit::request::request_args;
use libfuzzer_sys::fuzz_target;

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fuzz_target!(|data: &[u8]| {
    let _ = request_args(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(words) = split_args(text) {
        let joined: Vec<String> = words.iter().map(|w| quote(w)).collect();
        let again = split_args(&joined.join(" "));
        assert_eq!(again.as_ref(), Ok(&words), "quoted back: {joined:?}");
        let mut opts = getopts::Options::new();
        opts.optflag("a", "", "");
        opts.optflagmulti("v", "", "");
        opts.optopt("n", "", "", "N");
        opts.optmulti("p", "", "", "P");
        opts.optflagopt("f", "", "", "F");
        let _ = parse_opts(&opts, &words);
    }
});
