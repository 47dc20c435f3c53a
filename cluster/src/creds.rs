//! NATS credentials given as user info in the URL (`nats://USER:PASSWORD@HOST:PORT`): split off, so they go to the client's authentication and never into a log line or an error.
//!
//! async-nats 0.51 does not use the user info of a URL itself, so the
//! crate takes it out of every URL of the (comma-separated) list and
//! passes it with `ConnectOptions::user_and_password`. Every URL of a list
//! must carry the same credentials, or none.

/// The URL list without user info, and the credentials if there were any.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// The URLs as given, without their user info.
    pub urls: String,
    /// `(user, password)` when a URL carried them.
    pub user_password: Option<(String, String)>,
}

/// Why a URL list with credentials is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredsError {
    /// Two URLs of the list name different credentials.
    #[error("the NATS URLs carry different credentials (give the same user to every URL, or to the first only)")]
    Mixed,
    /// User info that is not `USER:PASSWORD`.
    #[error("NATS URL user info must be USER:PASSWORD (both non-empty)")]
    Malformed,
}

/// Splits `nats://user:pass@host:4222,nats://host2:4222` into the bare
/// URLs and `("user", "pass")`; URLs without user info take the others'.
pub fn split(list: &str) -> Result<Split, CredsError> {
    let mut found: Option<(String, String)> = None;
    let mut urls = Vec::new();
    for url in list.split(',') {
        let url = url.trim();
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (Some(s), r),
            None => (None, url),
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (info, host) = match authority.rsplit_once('@') {
            Some((i, h)) => (Some(i), h),
            None => (None, authority),
        };
        if let Some(info) = info {
            let (u, p) = info.split_once(':').ok_or(CredsError::Malformed)?;
            if u.is_empty() || p.is_empty() {
                return Err(CredsError::Malformed);
            }
            let pair = (u.to_owned(), p.to_owned());
            match &found {
                Some(f) if *f != pair => return Err(CredsError::Mixed),
                _ => found = Some(pair),
            }
        }
        urls.push(match scheme {
            Some(s) => format!("{s}://{host}{path}"),
            None => format!("{host}{path}"),
        });
    }
    Ok(Split {
        urls: urls.join(","),
        user_password: found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_split_off() {
        let s = split("nats://node:s3cret@127.0.0.1:4222").unwrap();
        assert_eq!(s.urls, "nats://127.0.0.1:4222");
        assert_eq!(s.user_password, Some(("node".into(), "s3cret".into())));
        let s = split("nats://a:b@h1:1,nats://h2:2").unwrap();
        assert_eq!(s.urls, "nats://h1:1,nats://h2:2");
        let s = split("nats://h1:1").unwrap();
        assert_eq!((s.urls.as_str(), s.user_password), ("nats://h1:1", None));
        assert_eq!(
            split("nats://a:b@h1:1,nats://a:c@h2:2"),
            Err(CredsError::Mixed)
        );
        assert_eq!(split("nats://a@h1:1"), Err(CredsError::Malformed));
        assert_eq!(split("nats://:p@h1:1"), Err(CredsError::Malformed));
        // A password with '@' in it: the last '@' ends the user info.
        let s = split("nats://u:p@ss@h:1").unwrap();
        assert_eq!(s.user_password, Some(("u".into(), "p@ss".into())));
        assert_eq!(s.urls, "nats://h:1");
    }
}
