//! The `args` string: shell-like splitting (whitespace, simple quotes) and
//! getopts parsing into one [`Selection`].

/// Which accounts a call reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// `-A` (the default): every account.
    All,
    /// `-u`: accounts with UID_MIN <= uid <= UID_MAX.
    Normal,
    /// `-S`: every other account (root, nobody, daemons).
    System,
    /// `-U NAME`: one account, by name.
    One(String),
}

/// The one-line synopsis quoted in every `3021` message.
pub const SYNOPSIS: &str = "usage: getinfo.users [-A | -u | -S | -U NAME] \
(-A all accounts, the default; -u normal users, UID_MIN..=UID_MAX of /etc/login.defs; \
-S system accounts, every other uid; -U NAME one account)";

/// Why an `args` string is refused (retcode 3021).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// `args` is present but not a string (nor null).
    #[error("\"args\" must be a string, got {0}")]
    NotString(String),
    /// A `'` or `"` without its closing partner.
    #[error("unterminated {0} quote in args")]
    UnterminatedQuote(char),
    /// getopts refused the options (unknown flag, missing or repeated value).
    #[error("{0}")]
    Getopts(String),
    /// A word that is not an option.
    #[error("unexpected operand {0:?}")]
    Operand(String),
    /// More than one of -A, -u, -S, -U.
    #[error("options {0} conflict: give at most one of -A, -u, -S, -U NAME")]
    Conflict(String),
    /// `-U ''`, or a name no account can have.
    #[error("invalid user name {0:?}")]
    BadName(String),
}

/// Splits `args` into words: runs of whitespace separate words; `'...'`
/// keeps everything literally; `"..."` keeps everything except that `\"`
/// and `\\` are escapes; outside quotes `\` makes the next character
/// literal. Adjacent pieces join (`-U'a b'` is one word). `''` is an
/// empty word.
pub fn split_words(args: &str) -> Result<Vec<String>, ArgsError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(ArgsError::UnterminatedQuote('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\')) => word.push(e),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err(ArgsError::UnterminatedQuote('"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(ArgsError::UnterminatedQuote('"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                // A trailing backslash stands for itself.
                word.push(chars.next().unwrap_or('\\'));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Parses an `args` string (absent or blank: `-A`).
pub fn parse_args(args: &str) -> Result<Selection, ArgsError> {
    let words = split_words(args)?;
    let mut opts = getopts::Options::new();
    opts.optflagmulti("A", "", "all accounts (the default)");
    opts.optflagmulti("u", "", "normal users");
    opts.optflagmulti("S", "", "system accounts");
    opts.optopt("U", "", "one account", "NAME");
    let m = opts
        .parse(&words)
        .map_err(|e| ArgsError::Getopts(e.to_string()))?;
    if let Some(operand) = m.free.first() {
        return Err(ArgsError::Operand(operand.clone()));
    }
    let user = m.opt_str("U");
    let given: Vec<&str> = [
        ("-A", m.opt_present("A")),
        ("-u", m.opt_present("u")),
        ("-S", m.opt_present("S")),
    ]
    .into_iter()
    .chain(std::iter::once(("-U", user.is_some())))
    .filter_map(|(flag, present)| present.then_some(flag))
    .collect();
    if given.len() > 1 {
        return Err(ArgsError::Conflict(given.join(" ")));
    }
    if let Some(name) = user {
        // No account name is empty or holds ':', a newline or a NUL.
        if name.is_empty() || name.contains([':', '\n', '\0']) {
            return Err(ArgsError::BadName(name));
        }
        return Ok(Selection::One(name));
    }
    Ok(match given.first().copied() {
        Some("-u") => Selection::Normal,
        Some("-S") => Selection::System,
        _ => Selection::All,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split_words(s).unwrap()
    }

    #[test]
    fn splitting_and_quotes() {
        assert_eq!(words(""), Vec::<String>::new());
        assert_eq!(words("  -U   root \t"), ["-U", "root"]);
        assert_eq!(words("-U 'a b'"), ["-U", "a b"]);
        assert_eq!(words(r#"-U "a \"b\" \\ \c""#), ["-U", r#"a "b" \ \c"#]);
        assert_eq!(words("-U'x y'z"), ["-Ux yz"]);
        assert_eq!(words("-U ''"), ["-U", ""]);
        assert_eq!(words(r"a\ b"), ["a b"]);
        assert_eq!(words(r"a\"), [r"a\"]);
        assert_eq!(words(r#"'"' "'""#), [r#"""#, "'"]);
        assert_eq!(
            split_words("-U 'root"),
            Err(ArgsError::UnterminatedQuote('\''))
        );
        assert_eq!(
            split_words("-U \"root"),
            Err(ArgsError::UnterminatedQuote('"'))
        );
        assert_eq!(
            split_words("-U \"root\\"),
            Err(ArgsError::UnterminatedQuote('"'))
        );
    }

    #[test]
    fn selections() {
        assert_eq!(parse_args(""), Ok(Selection::All));
        assert_eq!(parse_args("   "), Ok(Selection::All));
        assert_eq!(parse_args("-A"), Ok(Selection::All));
        assert_eq!(parse_args("-A -A"), Ok(Selection::All));
        assert_eq!(parse_args("-u"), Ok(Selection::Normal));
        assert_eq!(parse_args("-S"), Ok(Selection::System));
        assert_eq!(parse_args("-U root"), Ok(Selection::One("root".into())));
        assert_eq!(parse_args("-Uroot"), Ok(Selection::One("root".into())));
        assert_eq!(
            parse_args("-U 'odd name'"),
            Ok(Selection::One("odd name".into()))
        );
        assert_eq!(parse_args("-U \"x\""), Ok(Selection::One("x".into())));
    }

    #[test]
    fn errors() {
        assert!(matches!(parse_args("-A -u"), Err(ArgsError::Conflict(c)) if c == "-A -u"));
        assert!(matches!(parse_args("-uS"), Err(ArgsError::Conflict(_))));
        assert!(matches!(
            parse_args("-U root -A"),
            Err(ArgsError::Conflict(_))
        ));
        assert!(matches!(
            parse_args("-U a -U b"),
            Err(ArgsError::Getopts(_))
        ));
        assert!(matches!(parse_args("-x"), Err(ArgsError::Getopts(_))));
        assert!(matches!(parse_args("--all"), Err(ArgsError::Getopts(_))));
        assert!(matches!(parse_args("-U"), Err(ArgsError::Getopts(_))));
        assert_eq!(parse_args("root"), Err(ArgsError::Operand("root".into())));
        assert_eq!(parse_args("-A -- x"), Err(ArgsError::Operand("x".into())));
        assert_eq!(parse_args("-U ''"), Err(ArgsError::BadName(String::new())));
        assert_eq!(parse_args("-U a:b"), Err(ArgsError::BadName("a:b".into())));
        assert_eq!(
            parse_args("-U 'a\u{0}'"),
            Err(ArgsError::BadName("a\u{0}".into()))
        );
        assert!(matches!(
            parse_args("-A 'x"),
            Err(ArgsError::UnterminatedQuote('\''))
        ));
    }
}
