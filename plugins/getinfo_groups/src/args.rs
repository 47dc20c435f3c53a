//! The `args` words → one [`Selection`]: this plugin's options and the
//! checks of their values (splitting and getopts come from the kit).

use basicagent_collector_kit as kit;

/// Which groups a call reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// No option: every group.
    All,
    /// `-G NAME`: one group, by name (or gid).
    One(String),
}

/// Why a request's `args` are refused (retcode 3021).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A quoting, getopts or operand error.
    #[error(transparent)]
    Syntax(#[from] kit::ArgsError),
    /// `-G ''`, or a name no group can have.
    #[error("invalid group name {0:?}")]
    BadName(String),
}

/// Parses an `args` string (blank: every group).
pub fn parse_args(args: &str) -> Result<Selection, ArgsError> {
    parse_words(&kit::split_args(args)?)
}

/// Parses the words of `args` (none: the default selection).
pub fn parse_words(words: &[String]) -> Result<Selection, ArgsError> {
    let mut opts = getopts::Options::new();
    opts.optopt("G", "", "one group", "NAME");
    let m = kit::parse_opts(&opts, words)?;
    match m.opt_str("G") {
        None => Ok(Selection::All),
        Some(name) if name.is_empty() || name.contains([':', '\n', '\0', ',']) => {
            Err(ArgsError::BadName(name))
        }
        Some(name) => Ok(Selection::One(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        assert_eq!(parse_args(""), Ok(Selection::All));
        assert_eq!(parse_args("-G root"), Ok(Selection::One("root".into())));
        assert_eq!(parse_args("-Gsudo"), Ok(Selection::One("sudo".into())));
        assert_eq!(parse_args("-G 0"), Ok(Selection::One("0".into())));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_args("-x"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert!(matches!(
            parse_args("-G"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert!(matches!(
            parse_args("-G a -G b"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert_eq!(
            parse_args("root"),
            Err(ArgsError::Syntax(kit::ArgsError::Operand("root".into())))
        );
        assert_eq!(parse_args("-G ''"), Err(ArgsError::BadName(String::new())));
        assert_eq!(parse_args("-G a:b"), Err(ArgsError::BadName("a:b".into())));
        assert_eq!(
            parse_args("-G 'x"),
            Err(ArgsError::Syntax(kit::ArgsError::UnterminatedQuote('\'')))
        );
    }
}
