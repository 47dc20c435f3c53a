//! The agent's stable host id (a UUID), sent as `hostname` in `init`.
//!
//! Key design decision: the id is never the raw `/etc/machine-id` (which
//! must not leak off the host) but an application-specific id derived from
//! it exactly as systemd's `sd_id128_get_machine_app_specific()` does:
//! HMAC-SHA256 keyed by the machine id over [`APP_ID`], first 16 bytes,
//! marked as a version-4 UUID. So `systemd-id128 machine-id
//! --app-specific=faa71c55-9570-4da7-9fd1-2dbbf516a469` prints the same id.
//! Only without a usable machine id is a random id generated, once, and
//! kept in the state directory.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;

/// The BasicAgent application id used to derive the host id from the machine id.
pub const APP_ID: [u8; 16] = [
    0xfa, 0xa7, 0x1c, 0x55, 0x95, 0x70, 0x4d, 0xa7, 0x9f, 0xd1, 0x2d, 0xbb, 0xf5, 0x16, 0xa4, 0x69,
];

/// Default location of the machine id.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// Name of the file in the state directory that keeps a generated id.
pub const STATE_FILE: &str = "host_id";

/// Why no host id could be produced.
#[derive(Debug, thiserror::Error)]
pub enum HostIdError {
    /// The configured `agent.host_id` is not a UUID.
    #[error("agent.host_id {value:?} is not a UUID")]
    InvalidConfigured {
        /// The configured text.
        value: String,
    },
    /// Random bytes could not be read.
    #[error("reading /dev/urandom: {0}")]
    Random(#[source] io::Error),
    /// The generated id could not be stored.
    #[error("storing the host id in {}: {source}", .path.display())]
    State {
        /// The file or directory involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Returns the host id: `configured` (validated, lowercased); else the id
/// derived from the machine id at `machine_id_path`; else the id kept in
/// `state_dir/host_id`, generated (random v4) and stored on first use.
pub fn host_id(
    configured: Option<&str>,
    machine_id_path: &Path,
    state_dir: &Path,
) -> Result<String, HostIdError> {
    if let Some(value) = configured {
        return parse_uuid(value).ok_or_else(|| HostIdError::InvalidConfigured {
            value: value.to_owned(),
        });
    }
    match read_machine_id(machine_id_path) {
        Ok(machine_id) => return Ok(format_uuid(&app_specific_id(&machine_id, &APP_ID))),
        Err(reason) => log::info!(
            "no usable machine id in {} ({reason}); using the stored host id",
            machine_id_path.display()
        ),
    }
    stored_or_generated(state_dir)
}

/// Parses a hyphenated UUID (`8-4-4-4-12` hex digits, any case) and
/// returns it lowercased; `None` if it is not one.
pub fn parse_uuid(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    for (i, &b) in bytes.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        };
        if !ok {
            return None;
        }
    }
    Some(text.to_ascii_lowercase())
}

/// systemd's app-specific id: HMAC-SHA256(key = machine id, msg = app id),
/// first 16 bytes, with the UUID version 4 and variant 1 bits set.
pub fn app_specific_id(machine_id: &[u8; 16], app_id: &[u8; 16]) -> [u8; 16] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, machine_id);
    let tag = hmac::sign(&key, app_id);
    let mut id = [0u8; 16];
    id.copy_from_slice(&tag.as_ref()[..16]);
    set_v4_bits(&mut id);
    id
}

fn set_v4_bits(id: &mut [u8; 16]) {
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
}

/// Formats 16 bytes as a lowercase hyphenated UUID.
pub fn format_uuid(id: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Reads a machine id: 32 hex digits (a trailing newline allowed), not all zero.
fn read_machine_id(path: &Path) -> Result<[u8; 16], String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let hex = text.trim();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not 32 hexadecimal digits".into());
    }
    let mut id = [0u8; 16];
    for (i, out) in id.iter_mut().enumerate() {
        *out = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    if id == [0u8; 16] {
        return Err("all zero".into());
    }
    Ok(id)
}

fn stored_or_generated(state_dir: &Path) -> Result<String, HostIdError> {
    let path = state_dir.join(STATE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => match parse_uuid(text.trim()) {
            Some(id) => return Ok(id),
            None => log::warn!(
                "{} does not hold a UUID; generating a new host id",
                path.display()
            ),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::info!("generating a host id in {}", path.display())
        }
        Err(e) => log::warn!("reading {}: {e}; generating a new host id", path.display()),
    }
    let mut id = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(HostIdError::Random)?;
    set_v4_bits(&mut id);
    let text = format_uuid(&id);
    store(state_dir, &path, &text)?;
    Ok(text)
}

/// Writes `state_dir/host_id` atomically: temp file, fsync, rename, fsync dir.
fn store(state_dir: &Path, path: &Path, id: &str) -> Result<(), HostIdError> {
    let state_err = |p: &Path| {
        let p = p.to_owned();
        move |source| HostIdError::State { path: p, source }
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(state_err(state_dir))?;
    let tmp = state_dir.join(format!(".{STATE_FILE}.tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Best effort: do not leave the temporary file behind.
        let _ = fs::remove_file(&tmp);
        return Err(state_err(path)(e));
    }
    // Make the rename itself durable.
    File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(state_err(state_dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef\n";

    fn is_v4(id: &str) -> bool {
        parse_uuid(id).as_deref() == Some(id)
            && id.as_bytes()[14] == b'4'
            && matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b')
    }

    #[test]
    fn configured_id_wins_and_is_lowercased() {
        let dir = tempfile::tempdir().unwrap();
        let mid = dir.path().join("machine-id");
        fs::write(&mid, MACHINE_ID).unwrap();
        let id = host_id(
            Some("EDD6C192-52cb-4133-A17A-e7d8aec03de7"),
            &mid,
            dir.path(),
        )
        .unwrap();
        assert_eq!(id, "edd6c192-52cb-4133-a17a-e7d8aec03de7");
        assert!(matches!(
            host_id(Some("web-01"), &mid, dir.path()),
            Err(HostIdError::InvalidConfigured { .. })
        ));
    }

    #[test]
    fn derived_from_machine_id_like_systemd() {
        let dir = tempfile::tempdir().unwrap();
        let mid = dir.path().join("machine-id");
        fs::write(&mid, MACHINE_ID).unwrap();
        let state = dir.path().join("state");
        let a = host_id(None, &mid, &state).unwrap();
        let b = host_id(None, &mid, &state).unwrap();
        assert_eq!(a, b);
        assert!(is_v4(&a), "{a}");
        assert!(!a.replace('-', "").contains("0123456789abcdef"));
        // Same as Python: hmac.new(bytes.fromhex(MID), APP_ID, sha256), v4 bits set.
        assert_eq!(a, "5e6258c8-9bf3-41e1-9730-a10907c897ef");
        assert!(
            !state.exists(),
            "no state written when the machine id works"
        );
    }

    #[test]
    fn generated_once_without_machine_id() {
        let dir = tempfile::tempdir().unwrap();
        let mid = dir.path().join("missing-machine-id");
        let state = dir.path().join("var/lib/basicagent");
        let a = host_id(None, &mid, &state).unwrap();
        assert!(is_v4(&a), "{a}");
        let file = state.join(STATE_FILE);
        assert_eq!(fs::read_to_string(&file).unwrap(), format!("{a}\n"));
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(host_id(None, &mid, &state).unwrap(), a);
        // A bad machine id falls back the same way, to the same stored id.
        fs::write(&mid, "uninitialized\n").unwrap();
        assert_eq!(host_id(None, &mid, &state).unwrap(), a);
        fs::write(&mid, "00000000000000000000000000000000\n").unwrap();
        assert_eq!(host_id(None, &mid, &state).unwrap(), a);
        // Only the final file is left behind.
        let names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn malformed_stored_id_is_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let mid = dir.path().join("missing");
        let file = dir.path().join(STATE_FILE);
        fs::write(&file, "garbage\x00\n").unwrap();
        let a = host_id(None, &mid, dir.path()).unwrap();
        assert!(is_v4(&a));
        assert_eq!(fs::read_to_string(&file).unwrap(), format!("{a}\n"));
        fs::write(&file, "").unwrap();
        let b = host_id(None, &mid, dir.path()).unwrap();
        assert!(is_v4(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn unwritable_state_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "x").unwrap();
        let e = host_id(None, &dir.path().join("missing"), &blocker.join("sub")).unwrap_err();
        assert!(matches!(e, HostIdError::State { .. }), "{e}");
    }

    #[test]
    fn uuid_parsing() {
        assert!(parse_uuid("edd6c192-52cb-4133-a17a-e7d8aec03de7").is_some());
        assert!(parse_uuid("edd6c19252cb4133a17ae7d8aec03de7").is_none());
        assert!(parse_uuid("edd6c192-52cb-4133-a17a-e7d8aec03deg").is_none());
        assert!(parse_uuid("edd6c192-52cb-4133-a17a+e7d8aec03de7").is_none());
        assert_eq!(format_uuid(&APP_ID), "faa71c55-9570-4da7-9fd1-2dbbf516a469");
    }
}
