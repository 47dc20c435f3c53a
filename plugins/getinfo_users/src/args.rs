//! The `args` words → one [`Selection`]: this plugin's options and the
//! checks of their values (splitting and getopts come from the kit).

use basicagent_collector_kit as kit;

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
pub const SYNOPSIS: &str = "getinfo.users [-A | -u | -S | -U NAME] \
(-A all accounts, the default; -u normal users, UID_MIN..=UID_MAX of /etc/login.defs; \
-S system accounts, every other uid; -U NAME one account)";

/// Why an `args` string is refused (retcode 3021).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A quoting, getopts or operand error.
    #[error(transparent)]
    Syntax(#[from] kit::ArgsError),
    /// More than one of -A, -u, -S, -U.
    #[error("options {0} conflict: give at most one of -A, -u, -S, -U NAME")]
    Conflict(String),
    /// `-U ''`, or a name no account can have.
    #[error("invalid user name {0:?}")]
    BadName(String),
}

/// Parses an `args` string (absent or blank: `-A`).
pub fn parse_args(args: &str) -> Result<Selection, ArgsError> {
    parse_words(&kit::split_args(args)?)
}

/// Parses the words of `args` (none: the default selection).
pub fn parse_words(words: &[String]) -> Result<Selection, ArgsError> {
    let mut opts = getopts::Options::new();
    opts.optflagmulti("A", "", "all accounts (the default)");
    opts.optflagmulti("u", "", "normal users");
    opts.optflagmulti("S", "", "system accounts");
    opts.optopt("U", "", "one account", "NAME");
    let m = kit::parse_opts(&opts, words)?;
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
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert!(matches!(
            parse_args("-x"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert!(matches!(
            parse_args("--all"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert!(matches!(
            parse_args("-U"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert_eq!(
            parse_args("root"),
            Err(ArgsError::Syntax(kit::ArgsError::Operand("root".into())))
        );
        assert_eq!(
            parse_args("-A -- x"),
            Err(ArgsError::Syntax(kit::ArgsError::Operand("x".into())))
        );
        assert_eq!(parse_args("-U ''"), Err(ArgsError::BadName(String::new())));
        assert_eq!(parse_args("-U a:b"), Err(ArgsError::BadName("a:b".into())));
        assert_eq!(
            parse_args("-U 'a\u{0}'"),
            Err(ArgsError::BadName("a\u{0}".into()))
        );
        assert!(matches!(
            parse_args("-A 'x"),
            Err(ArgsError::Syntax(kit::ArgsError::UnterminatedQuote('\'')))
        ));
    }
}
