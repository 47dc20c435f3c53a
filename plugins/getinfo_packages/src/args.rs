//! The `args` words → one [`Selection`]: this plugin's options and the
//! checks of their values (splitting and getopts come from the kit).

use basicagent_collector_kit as kit;

/// What a call reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// `-n NAME`: only the package NAME (every architecture) or NAME:ARCH.
    pub name: Option<String>,
    /// `-c`: the count only, no list.
    pub count_only: bool,
}

/// Why a request's `args` are refused (retcode 3021).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A quoting, getopts or operand error.
    #[error(transparent)]
    Syntax(#[from] kit::ArgsError),
    /// `-n ''`, or a name no package can have.
    #[error("invalid package name {0:?}")]
    BadName(String),
}

/// Parses an `args` string (blank: every installed package).
pub fn parse_args(args: &str) -> Result<Selection, ArgsError> {
    parse_words(&kit::split_args(args)?)
}

/// Parses the words of `args` (none: the default selection).
pub fn parse_words(words: &[String]) -> Result<Selection, ArgsError> {
    let mut opts = getopts::Options::new();
    opts.optopt("n", "", "one package", "NAME");
    opts.optflagmulti("c", "", "count only");
    let m = kit::parse_opts(&opts, words)?;
    let name = m.opt_str("n");
    if let Some(name) = &name {
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(ArgsError::BadName(name.clone()));
        }
    }
    Ok(Selection {
        name,
        count_only: m.opt_present("c"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        assert_eq!(parse_args(""), Ok(Selection::default()));
        let one = |n: &str, c| Selection {
            name: Some(n.into()),
            count_only: c,
        };
        assert_eq!(parse_args("-n bash"), Ok(one("bash", false)));
        assert_eq!(parse_args("-nlibc6:amd64 -c"), Ok(one("libc6:amd64", true)));
        assert_eq!(
            parse_args("-c -c"),
            Ok(Selection {
                name: None,
                count_only: true
            })
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_args("-x"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert!(matches!(
            parse_args("-n"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert!(matches!(
            parse_args("-n a -n b"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert_eq!(
            parse_args("bash"),
            Err(ArgsError::Syntax(kit::ArgsError::Operand("bash".into())))
        );
        assert_eq!(parse_args("-n ''"), Err(ArgsError::BadName(String::new())));
        assert_eq!(
            parse_args("-n 'a b'"),
            Err(ArgsError::BadName("a b".into()))
        );
        assert_eq!(
            parse_args("-n 'x"),
            Err(ArgsError::Syntax(kit::ArgsError::UnterminatedQuote('\'')))
        );
    }
}
