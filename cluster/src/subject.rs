//! NATS subjects for host ids: a host id from a hostile peer must never
//! change the shape of a subject.
//!
//! A NATS subject is split into tokens at `.`, and `*`, `>` and white space
//! are special. Host ids are UUIDs in practice, but the id comes from the
//! agent's `init`, so every id is escaped: bytes in `[A-Za-z0-9_-]` stay as
//! they are and every other byte becomes `%XX` (upper-case hex), `%` included.
//! The mapping is one-to-one, so two ids never share a subject, and a UUID
//! maps to itself. Ids that are empty or longer than [`MAX_HOST_ID_LEN`]
//! bytes are refused.

use crate::ClusterError;

/// The longest host id accepted, in bytes (before escaping).
pub const MAX_HOST_ID_LEN: usize = 256;

/// The subject prefix of the per-host request subjects.
pub const HOST_PREFIX: &str = "ba.host.";

/// Escapes `host_id` into one subject token (see the module docs).
pub fn escape_host_id(host_id: &str) -> Result<String, ClusterError> {
    if host_id.is_empty() {
        return Err(ClusterError::InvalidHostId("empty".into()));
    }
    if host_id.len() > MAX_HOST_ID_LEN {
        return Err(ClusterError::InvalidHostId(format!(
            "{} bytes, the limit is {MAX_HOST_ID_LEN}",
            host_id.len()
        )));
    }
    let mut out = String::with_capacity(host_id.len());
    for &b in host_id.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Ok(out)
}

/// The subject a node holding `host_id` listens on: `ba.host.<escaped id>`.
pub fn host_subject(host_id: &str) -> Result<String, ClusterError> {
    Ok(format!("{HOST_PREFIX}{}", escape_host_id(host_id)?))
}

/// Checks a node name: 1 to 64 bytes of `[A-Za-z0-9._-]`.
pub(crate) fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "node name must be 1 to 64 bytes, got {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(format!(
            "node name {name:?} may hold only A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_unchanged() {
        let id = "0b7f5d1c-445e-49c0-8612-111b741b920f";
        assert_eq!(host_subject(id).unwrap(), format!("ba.host.{id}"));
    }

    #[test]
    fn special_characters_are_escaped_into_one_token() {
        for id in [
            "a.b",
            "*",
            ">",
            "a b",
            "a\tb",
            "x.>",
            "%",
            "ünï",
            "a\r\nPUB x 1",
        ] {
            let s = host_subject(id).unwrap();
            let token = s.strip_prefix("ba.host.").unwrap();
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'%'),
                "{id:?} -> {s:?}"
            );
        }
        assert_eq!(escape_host_id("a.b").unwrap(), "a%2Eb");
        assert_eq!(escape_host_id("%").unwrap(), "%25");
    }

    #[test]
    fn escaping_is_one_to_one() {
        // "%2E" escapes its '%', so it cannot collide with ".".
        assert_ne!(escape_host_id(".").unwrap(), escape_host_id("%2E").unwrap());
    }

    #[test]
    fn empty_and_long_ids_are_refused() {
        assert!(matches!(
            host_subject(""),
            Err(ClusterError::InvalidHostId(_))
        ));
        let long = "a".repeat(MAX_HOST_ID_LEN + 1);
        assert!(matches!(
            host_subject(&long),
            Err(ClusterError::InvalidHostId(_))
        ));
        assert!(host_subject(&"a".repeat(MAX_HOST_ID_LEN)).is_ok());
    }

    #[test]
    fn node_names() {
        assert!(check_node_name("node-1.a_b").is_ok());
        for bad in ["", "a b", "a*", "a>", "ä", &"n".repeat(65)] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }
}
