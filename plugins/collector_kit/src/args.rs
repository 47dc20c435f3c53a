//! The `args` string: split into words with shell-like quoting, then
//! parsed by getopts with operands refused.

use basicagent_abi::args::SplitError;

/// Why an `args` string is refused; every one is answered `3021`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// `args` is present but neither a string nor `null` (the raw JSON).
    #[error("\"args\" must be a string, got {0}")]
    NotString(String),
    /// A `'` or `"` without its closing partner.
    #[error("unterminated {0} quote in args")]
    UnterminatedQuote(char),
    /// getopts refused the words (unknown option, missing or repeated
    /// value).
    #[error(transparent)]
    Getopts(#[from] getopts::Fail),
    /// A word that is not an option (collectors take no operands).
    #[error("unexpected operand {0:?}")]
    Operand(String),
}

/// Splits `args` into words by the one rule of [`basicagent_abi::args`]
/// (the same code the host's `args_argv` uses for C plugins): runs of
/// whitespace separate words; `'...'` keeps everything literally; in
/// `"..."` only `\"` and `\\` are escapes; outside quotes `\` makes the
/// next character literal (a trailing `\` stands for itself). Adjacent
/// pieces join (`-U'a b'` is one word), and `''` is an empty word. Blank
/// `args` give no words.
pub fn split_args(args: &str) -> Result<Vec<String>, ArgsError> {
    basicagent_abi::args::split_args(args).map_err(|e| match e {
        SplitError::UnterminatedQuote(q) => ArgsError::UnterminatedQuote(q),
    })
}

/// Parses `words` with the plugin's `opts`; an operand (a word that is
/// not an option or an option's value, `--` included) is refused.
pub fn parse_opts(
    opts: &getopts::Options,
    words: &[String],
) -> Result<getopts::Matches, ArgsError> {
    let m = opts.parse(words)?;
    match m.free.first() {
        Some(operand) => Err(ArgsError::Operand(operand.clone())),
        None => Ok(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split_args(s).unwrap()
    }

    #[test]
    fn whitespace_separates() {
        assert_eq!(words(""), Vec::<String>::new());
        assert_eq!(words(" \t\n "), Vec::<String>::new());
        assert_eq!(words("  -U   root \t"), ["-U", "root"]);
        assert_eq!(words("-p 1\n-n\t2"), ["-p", "1", "-n", "2"]);
    }

    #[test]
    fn quotes_and_backslashes() {
        assert_eq!(words("-U 'a b'"), ["-U", "a b"]);
        assert_eq!(words(r#"'a \" b'"#), [r#"a \" b"#], "no escapes in '...'");
        assert_eq!(words(r#"-U "a \"b\" \\ \c""#), ["-U", r#"a "b" \ \c"#]);
        assert_eq!(words("-U'x y'z"), ["-Ux yz"], "adjacent pieces join");
        assert_eq!(words("-m''"), ["-m"]);
        assert_eq!(words("-U ''"), ["-U", ""]);
        assert_eq!(words(r#""""#), [""]);
        assert_eq!(words(r"a\ b"), ["a b"]);
        assert_eq!(words(r"a\'b"), ["a'b"]);
        assert_eq!(
            words(r"a\"),
            [r"a\"],
            "a trailing backslash stands for itself"
        );
        assert_eq!(words(r#"'"' "'""#), [r#"""#, "'"]);
        assert_eq!(words("é 'ü ß'"), ["é", "ü ß"]);
    }

    #[test]
    fn unterminated_quotes() {
        assert_eq!(split_args("'x"), Err(ArgsError::UnterminatedQuote('\'')));
        assert_eq!(
            split_args("-U \"root"),
            Err(ArgsError::UnterminatedQuote('"'))
        );
        assert_eq!(split_args("\"x\\"), Err(ArgsError::UnterminatedQuote('"')));
        assert_eq!(
            split_args("'a' 'b"),
            Err(ArgsError::UnterminatedQuote('\''))
        );
        assert_eq!(
            ArgsError::UnterminatedQuote('\'').to_string(),
            "unterminated ' quote in args"
        );
    }

    fn opts() -> getopts::Options {
        let mut opts = getopts::Options::new();
        opts.optflagmulti("a", "", "all");
        opts.optopt("n", "", "limit", "N");
        opts
    }

    #[test]
    fn options_parse() {
        let m = parse_opts(&opts(), &words("-a -n 3")).unwrap();
        assert!(m.opt_present("a"));
        assert_eq!(m.opt_str("n").as_deref(), Some("3"));
        let m = parse_opts(&opts(), &words("-aa -n3")).unwrap();
        assert_eq!(m.opt_str("n").as_deref(), Some("3"));
        assert!(parse_opts(&opts(), &[]).is_ok());
    }

    #[test]
    fn getopts_errors_and_operands() {
        let e = parse_opts(&opts(), &words("-x")).unwrap_err();
        assert!(matches!(
            e,
            ArgsError::Getopts(getopts::Fail::UnrecognizedOption(_))
        ));
        assert_eq!(e.to_string(), "Unrecognized option: 'x'");
        assert!(matches!(
            parse_opts(&opts(), &words("-n")),
            Err(ArgsError::Getopts(getopts::Fail::ArgumentMissing(_)))
        ));
        assert!(matches!(
            parse_opts(&opts(), &words("-n 1 -n 2")),
            Err(ArgsError::Getopts(getopts::Fail::OptionDuplicated(_)))
        ));
        assert_eq!(
            parse_opts(&opts(), &words("-a stray")),
            Err(ArgsError::Operand("stray".into()))
        );
        assert_eq!(
            parse_opts(&opts(), &words("-a -- -n")),
            Err(ArgsError::Operand("-n".into()))
        );
        assert_eq!(
            ArgsError::Operand("x".into()).to_string(),
            "unexpected operand \"x\""
        );
    }
}
