//! The `args` words → one [`Selection`]: this plugin's options and the
//! checks of their values (splitting and getopts come from the kit).

use basicagent_collector_kit as kit;

/// The order of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// `-s pid` (the default): ascending pid.
    #[default]
    Pid,
    /// `-s rss`: largest resident set first.
    Rss,
    /// `-s cpu`: most CPU time first.
    Cpu,
}

/// What a call reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// `-p PID`: only this process.
    pub pid: Option<u32>,
    /// `-U USER`: only processes of this user (name or uid).
    pub user: Option<String>,
    /// `-s rss|cpu|pid`.
    pub sort: Sort,
    /// `-n N`: at most N processes (after sorting).
    pub limit: Option<usize>,
}

/// Why a request's `args` are refused (retcode 3021).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A quoting, getopts or operand error.
    #[error(transparent)]
    Syntax(#[from] kit::ArgsError),
    /// `-U ''`, or a name no account can have.
    #[error("invalid user {0:?}")]
    BadName(String),
    /// An option's value is out of range or not a number.
    #[error("invalid value {1:?} for {0}")]
    BadValue(&'static str, String),
}

/// Parses an `args` string (blank: every process, by pid).
pub fn parse_args(args: &str) -> Result<Selection, ArgsError> {
    parse_words(&kit::split_args(args)?)
}

/// Parses the words of `args` (none: the default selection).
pub fn parse_words(words: &[String]) -> Result<Selection, ArgsError> {
    let mut opts = getopts::Options::new();
    opts.optopt("p", "", "one process", "PID");
    opts.optopt("U", "", "one user's processes", "USER");
    opts.optopt("s", "", "sort", "rss|cpu|pid");
    opts.optopt("n", "", "limit", "N");
    let m = kit::parse_opts(&opts, words)?;
    let pid = match m.opt_str("p") {
        None => None,
        Some(p) => match p.parse::<u32>() {
            Ok(pid) if pid > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(pid),
            _ => return Err(ArgsError::BadValue("-p", p)),
        },
    };
    let user = m.opt_str("U");
    if let Some(u) = &user {
        if u.is_empty() || u.contains([':', '\n', '\0']) {
            return Err(ArgsError::BadName(u.clone()));
        }
    }
    let sort = match m.opt_str("s").as_deref() {
        None | Some("pid") => Sort::Pid,
        Some("rss") => Sort::Rss,
        Some("cpu") => Sort::Cpu,
        Some(other) => return Err(ArgsError::BadValue("-s", other.to_owned())),
    };
    let limit = match m.opt_str("n") {
        None => None,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(ArgsError::BadValue("-n", n)),
        },
    };
    Ok(Selection {
        pid,
        user,
        sort,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        assert_eq!(parse_args(""), Ok(Selection::default()));
        assert_eq!(
            parse_args("-p 42 -U root -s rss -n 5"),
            Ok(Selection {
                pid: Some(42),
                user: Some("root".into()),
                sort: Sort::Rss,
                limit: Some(5)
            })
        );
        assert_eq!(parse_args("-s cpu").map(|s| s.sort), Ok(Sort::Cpu));
        assert_eq!(parse_args("-s pid").map(|s| s.sort), Ok(Sort::Pid));
        assert_eq!(parse_args("-U 0").map(|s| s.user), Ok(Some("0".into())));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_args("-x"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert!(matches!(
            parse_args("-p"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert!(matches!(
            parse_args("-p 1 -p 2"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        for (args, flag, value) in [
            ("-p 0", "-p", "0"),
            ("-p -3", "-p", "-3"),
            ("-p +3", "-p", "+3"),
            ("-p x", "-p", "x"),
            ("-p 99999999999", "-p", "99999999999"),
            ("-s mem", "-s", "mem"),
            ("-n 0", "-n", "0"),
            ("-n ten", "-n", "ten"),
        ] {
            assert_eq!(
                parse_args(args),
                Err(ArgsError::BadValue(flag, value.into())),
                "{args}"
            );
        }
        assert_eq!(
            parse_args("1"),
            Err(ArgsError::Syntax(kit::ArgsError::Operand("1".into())))
        );
        assert_eq!(parse_args("-U ''"), Err(ArgsError::BadName(String::new())));
        assert_eq!(
            parse_args("-U 'x"),
            Err(ArgsError::Syntax(kit::ArgsError::UnterminatedQuote('\'')))
        );
    }
}
