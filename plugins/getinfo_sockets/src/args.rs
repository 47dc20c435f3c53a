//! The `args` words → one [`Selection`]: this plugin's options and the
//! checks of their values (splitting and getopts come from the kit).

use basicagent_collector_kit as kit;

/// Which sockets a call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// Report TCP sockets (false only with `-u` alone).
    pub tcp: bool,
    /// Report UDP sockets (false only with `-t` alone).
    pub udp: bool,
    /// `-l`: listening only (TCP LISTEN, UDP unconnected).
    pub listening_only: bool,
    /// `-a`: TCP sockets in every state, not only LISTEN and ESTABLISHED.
    pub all_states: bool,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            tcp: true,
            udp: true,
            listening_only: false,
            all_states: false,
        }
    }
}

/// Why a request's `args` are refused (retcode 3021).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A quoting, getopts or operand error.
    #[error(transparent)]
    Syntax(#[from] kit::ArgsError),
    /// `-l` and `-a` together.
    #[error("-l (listening only) and -a (every state) conflict")]
    Conflict,
}

/// Parses an `args` string (blank: TCP LISTEN and ESTABLISHED, all UDP).
pub fn parse_args(args: &str) -> Result<Selection, ArgsError> {
    parse_words(&kit::split_args(args)?)
}

/// Parses the words of `args` (none: the default selection).
pub fn parse_words(words: &[String]) -> Result<Selection, ArgsError> {
    let mut opts = getopts::Options::new();
    opts.optflagmulti("l", "", "listening only");
    opts.optflagmulti("t", "", "TCP");
    opts.optflagmulti("u", "", "UDP");
    opts.optflagmulti("a", "", "every TCP state");
    let m = kit::parse_opts(&opts, words)?;
    let (t, u) = (m.opt_present("t"), m.opt_present("u"));
    let sel = Selection {
        tcp: t || !u,
        udp: u || !t,
        listening_only: m.opt_present("l"),
        all_states: m.opt_present("a"),
    };
    if sel.listening_only && sel.all_states {
        return Err(ArgsError::Conflict);
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        let d = Selection::default();
        assert_eq!(parse_args(""), Ok(d));
        assert_eq!(parse_args("-t -u"), Ok(d));
        assert_eq!(parse_args("-t"), Ok(Selection { udp: false, ..d }));
        assert_eq!(parse_args("-u"), Ok(Selection { tcp: false, ..d }));
        assert_eq!(
            parse_args("-lt"),
            Ok(Selection {
                udp: false,
                listening_only: true,
                ..d
            })
        );
        assert_eq!(
            parse_args("-a -a"),
            Ok(Selection {
                all_states: true,
                ..d
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
            parse_args("--listen"),
            Err(ArgsError::Syntax(kit::ArgsError::Getopts(_)))
        ));
        assert_eq!(parse_args("-l -a"), Err(ArgsError::Conflict));
        assert_eq!(
            parse_args("tcp"),
            Err(ArgsError::Syntax(kit::ArgsError::Operand("tcp".into())))
        );
        assert_eq!(
            parse_args("-l 'x"),
            Err(ArgsError::Syntax(kit::ArgsError::UnterminatedQuote('\'')))
        );
    }
}
