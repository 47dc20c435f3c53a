//! Small file-system steps tests repeat: modes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Sets `path`'s mode bits to `mode` (panics naming the path).
pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}
