//! The one rule that splits a request's `"args"` string into words: used
//! by the host's `args_argv` for C plugins and by `plugins/kit` for the
//! Rust collectors, so both see the same argv for the same request.

/// Why an `args` string does not split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A `'` or `"` without its closing partner.
    #[error("unterminated {0} quote in args")]
    UnterminatedQuote(char),
}

/// Splits `args` into words: runs of whitespace separate words; `'...'`
/// keeps everything literally; in `"..."` only `\"` and `\\` are escapes;
/// outside quotes `\` makes the next character literal (a trailing `\`
/// stands for itself). Adjacent pieces join (`-U'a b'` is one word), and
/// `''` is an empty word. Blank `args` give no words. `--` and clusters
/// like `-rr` are words like any other: option parsing (getopt) decides.
pub fn split_args(args: &str) -> Result<Vec<String>, SplitError> {
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
                        None => return Err(SplitError::UnterminatedQuote('\'')),
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
                            None => return Err(SplitError::UnterminatedQuote('"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(SplitError::UnterminatedQuote('"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashes_and_clusters_are_plain_words() {
        assert_eq!(split_args("-rr -- -x").unwrap(), ["-rr", "--", "-x"]);
        assert_eq!(split_args("-n'3'").unwrap(), ["-n3"]);
    }

    #[test]
    fn unterminated() {
        assert_eq!(split_args("'x"), Err(SplitError::UnterminatedQuote('\'')));
        assert_eq!(split_args("\"x\\"), Err(SplitError::UnterminatedQuote('"')));
    }
}
