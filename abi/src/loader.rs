//! Finding, checking and loading plugin files: method `ns.name` → file
//! `libns_name.so` in the plugin directory.
//!
//! The method name is validated before any path is built. Every file is
//! first opened by the file-trust rule ([`basicagent_fstrust`]: no symbolic
//! link, owner root or the effective uid, no write for others on the file,
//! its directory and each directory above), checked with `fstat` on that
//! descriptor, and only then handed to `dlopen` as `/proc/self/fd/N` of the
//! very descriptor checked: no code of a refused file ever runs. Files are
//! opened with `RTLD_NOW | RTLD_LOCAL` and never closed (`dlclose` of a Rust
//! cdylib with thread-local destructors crashes); the descriptor stays open
//! so its `/proc/self/fd/N` name is never reused, which also lets a changed
//! file load beside the old one (glibc hands back the old handle for a name
//! or inode it already has).
//!
//! Signatures ([`crate::signature`]): when a `.sig` exists beside the file,
//! or the policy requires one, the checked descriptor is read whole, the
//! bytes are verified, copied into a sealed memfd (`F_SEAL_WRITE`,
//! `F_SEAL_SHRINK`, `F_SEAL_GROW`, `F_SEAL_SEAL`), and *that* is what
//! `dlopen` maps: the bytes verified are the bytes run, whatever happens to
//! the file afterwards. Comparing `fstat` before and after would only
//! notice a rewrite after the constructors of the rewritten file had run.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, CStr};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use basicagent_fstrust::{Follow, TrustError, TrustedFile};

use crate::ffi::{self, CallId, HostApi, PluginDescriptor, VersionHeader};
use crate::host::{self, Completer, Completion, HostSettings};
use crate::retcode;
use crate::signature::{self, FileBytes, SigError, SignaturePolicy, Verdict};

/// Why a method cannot be served by a plugin file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid method name {0:?}: expected NAMESPACE.NAME, each [a-z][a-z0-9_]{{0,31}}")]
    InvalidMethod(String),
    #[error("no plugin serves {method}: {path} not found")]
    NotFound { method: String, path: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a shared object (no ELF header)")]
    NotElf { path: PathBuf },
    #[error("{path}: dlopen failed: {reason}")]
    Dlopen { path: PathBuf, reason: String },
    #[error("{path}: no entry symbol basicagent_plugin_v1 (not a BasicAgent plugin, or built for another ABI)")]
    NoEntry { path: PathBuf },
    #[error("{path}: entry symbol returned no descriptor")]
    NullDescriptor { path: PathBuf },
    #[error("{path}: plugin ABI version {found}, this host speaks {expected}")]
    AbiVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path}: descriptor too small ({found} bytes, ABI v1 needs {needed})")]
    DescriptorTooSmall {
        path: PathBuf,
        found: u32,
        needed: u32,
    },
    #[error("{path}: invalid descriptor: {reason}")]
    BadDescriptor { path: PathBuf, reason: String },
    #[error("{path}: does not serve {method} (serves {served})")]
    MethodNotServed {
        path: PathBuf,
        method: String,
        served: String,
    },
    #[error("{path}: plugin init failed (see the log)")]
    InitFailed { path: PathBuf },
    /// The file-trust rule refused the file (or a directory on its path)
    /// before any byte of it was mapped.
    #[error("{0}")]
    Untrusted(TrustError),
    /// The signature rule refused the file (before any byte was mapped).
    #[error("{path}: {source}")]
    Signature {
        path: PathBuf,
        #[source]
        source: SigError,
    },
    #[error("{reason} (refused earlier; not retried until the file or its .sig changes)")]
    Refused {
        path: PathBuf,
        retcode: u32,
        reason: String,
    },
}

impl LoadError {
    /// The protocol retcode for this refusal: a missing file or a bad name
    /// is an unknown method; a file that exists but is broken is a plugin
    /// failure.
    pub fn retcode(&self) -> u32 {
        match self {
            LoadError::InvalidMethod(_)
            | LoadError::NotFound { .. }
            | LoadError::MethodNotServed { .. } => retcode::UNKNOWN_METHOD,
            LoadError::Refused { retcode, .. } => *retcode,
            _ => retcode::PLUGIN_FAILURE,
        }
    }

    /// The response message: the retcode's standard text, then this
    /// error (`Unknown method: no plugin serves ...`, `Plugin failure:
    /// PATH: ...`), as every message on the wire starts.
    pub fn message(&self) -> String {
        format!("{}: {self}", retcode::message(self.retcode()))
    }
}

fn valid_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Splits and validates `NAMESPACE.NAME` (each part `[a-z][a-z0-9_]{0,31}`).
pub fn split_method(method: &str) -> Result<(&str, &str), LoadError> {
    match method.split_once('.') {
        Some((ns, name)) if valid_part(ns) && valid_part(name) => Ok((ns, name)),
        _ => Err(LoadError::InvalidMethod(method.to_owned())),
    }
}

/// The file that serves `method`: `getinfo.users` → `libgetinfo_users.so`.
pub fn file_name_for(method: &str) -> Result<String, LoadError> {
    let (ns, name) = split_method(method)?;
    Ok(format!("lib{ns}_{name}.so"))
}

/// The method a plugin file name stands for: `libgetinfo_users.so` →
/// `getinfo.users` (split at the first `_`); `None` for other names.
pub fn method_for_file(file: &str) -> Option<String> {
    let stem = file.strip_prefix("lib")?.strip_suffix(".so")?;
    let (ns, name) = stem.split_once('_')?;
    let method = format!("{ns}.{name}");
    split_method(&method).ok()?;
    Some(method)
}

/// A plugin's self-description, copied out of its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub methods: Vec<String>,
    pub usage: String,
    pub path: PathBuf,
}

/// Identity of a file on disk, to notice a replaced plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            size: meta.size(),
        }
    }
}

/// A version of a plugin file for the refusal memo: the file's identity
/// and its `.sig`'s (so signing a refused file is enough for a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    file: FileId,
    sig: Option<FileId>,
}

impl Version {
    fn of(path: &Path, meta: &std::fs::Metadata) -> Version {
        Version {
            file: FileId::of(meta),
            sig: std::fs::symlink_metadata(signature::sig_path(path))
                .ok()
                .map(|m| FileId::of(&m)),
        }
    }
}

/// A loaded, initialised plugin. Never unloaded.
pub struct Plugin {
    info: PluginInfo,
    desc: &'static PluginDescriptor,
    file_id: FileId,
    signature: Verdict,
    /// argv\[0\] of a request without a `"method"`, shared by its calls.
    argv0: Arc<str>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).finish()
    }
}

impl Plugin {
    /// Opens `path` by the file-trust rule, then loads, checks and
    /// initialises the plugin in it.
    ///
    /// Every load goes through `/proc/self/fd/N` of the checked descriptor
    /// (N kept open for ever), so a file replaced on disk is mapped anew
    /// beside the old one; `_unique` is kept for API compatibility.
    pub fn load(path: &Path, settings: &HostSettings, _unique: bool) -> Result<Plugin, LoadError> {
        Plugin::load_with(path, settings, &SignaturePolicy::default())
    }

    /// [`Plugin::load`] under a signature policy.
    pub fn load_with(
        path: &Path,
        settings: &HostSettings,
        policy: &SignaturePolicy,
    ) -> Result<Plugin, LoadError> {
        let opened =
            basicagent_fstrust::open_file(path, Follow::No).map_err(LoadError::Untrusted)?;
        Plugin::load_opened(path, opened, settings, policy)
    }

    /// How the file stood with respect to signatures when it was loaded.
    pub fn signature(&self) -> Verdict {
        self.signature
    }

    /// Loads the plugin from a file already opened by the trust rule.
    fn load_opened(
        path: &Path,
        opened: TrustedFile,
        settings: &HostSettings,
        policy: &SignaturePolicy,
    ) -> Result<Plugin, LoadError> {
        let TrustedFile { mut file, meta, .. } = opened;
        let file_id = FileId::of(&meta);
        let sig_error = |source| LoadError::Signature {
            path: path.to_owned(),
            source,
        };
        let sig = signature::read_sig(path).map_err(sig_error)?;
        let not_elf = || LoadError::NotElf {
            path: path.to_owned(),
        };
        let (fd, verdict) = if sig.is_none() && !policy.require {
            let mut magic = [0u8; 4];
            if file.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
                return Err(not_elf());
            }
            (file.as_raw_fd(), Verdict::Unsigned)
        } else {
            let bytes =
                FileBytes::read(&mut file, meta.size()).map_err(|source| LoadError::Io {
                    path: path.to_owned(),
                    source,
                })?;
            if !bytes.file().starts_with(b"\x7fELF") {
                return Err(not_elf());
            }
            let verdict = policy
                .check(path, &bytes, sig.as_deref())
                .map_err(sig_error)?;
            let sealed = sealed_copy(bytes.file()).map_err(|source| LoadError::Io {
                path: path.to_owned(),
                source,
            })?;
            // The memfd is what is mapped; the file is done with.
            drop(file);
            file = sealed;
            (file.as_raw_fd(), verdict)
        };
        // The fd stays open (leaked) so that its number, and therefore the
        // name glibc records, is never reused in this process.
        std::mem::forget(file);
        let open_path = PathBuf::from(format!("/proc/self/fd/{fd}"));
        // SAFETY: loading a shared object runs its initialisers. That is the
        // point of a plugin: the file passed the trust rule on this very
        // descriptor (root-owned, not writable by others, nor its
        // directories) and starts with the ELF magic.
        let lib = unsafe {
            libloading::os::unix::Library::open(
                Some(&open_path),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL,
            )
        }
        .map_err(|e| LoadError::Dlopen {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        // SAFETY: the symbol, if present, has the type the header declares
        // (`ba_plugin_entry_v1`); a plugin exporting the name with another
        // type breaks the contract we document.
        let entry: Option<ffi::EntryV1> = unsafe { lib.get::<ffi::EntryV1>(ffi::ENTRY_SYMBOL_V1) }
            .ok()
            .map(|s| *s);
        // Never dlclose: the library stays mapped for the life of the process.
        let _ = lib.into_raw();
        let entry = entry.ok_or_else(|| LoadError::NoEntry {
            path: path.to_owned(),
        })?;
        // SAFETY: calling the plugin's entry point, per the contract.
        let desc_ptr = unsafe { entry() };
        let desc = check_descriptor(path, desc_ptr)?;
        let info = read_info(path, desc)?;
        let api: &'static HostApi = host::host_api(settings);
        if let Some(init) = desc.init {
            // SAFETY: `api` is a 'static table; init is the plugin's own.
            let status = unsafe { init(api) };
            if status != ffi::STATUS_OK {
                return Err(LoadError::InitFailed {
                    path: path.to_owned(),
                });
            }
        }
        let argv0 = Arc::from(info.name.as_str());
        Ok(Plugin {
            info,
            desc,
            file_id,
            signature: verdict,
            argv0,
        })
    }

    /// The plugin's self-description.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Whether the plugin lists `method` among those it serves.
    pub fn serves(&self, method: &str) -> bool {
        self.info.methods.iter().any(|m| m == method)
    }

    /// Starts a call. `done` runs exactly once, on the thread that
    /// completes the call (possibly this one, before `call` returns).
    pub fn call(&self, request: &[u8], done: Completer) -> CallId {
        let id = host::register(done, request, Arc::clone(&self.argv0));
        match self.desc.call {
            // SAFETY: `request` is live for the duration of the call; the
            // plugin copies what it keeps (contract).
            Some(call) => unsafe { call(id, request.as_ptr().cast::<c_char>(), request.len()) },
            None => {
                host::finish(Completion {
                    call: id,
                    retcode: retcode::PLUGIN_FAILURE,
                    message: "Plugin failure: plugin has no call function".to_owned(),
                    data: None,
                });
            }
        }
        id
    }

    /// Asks the plugin to stop a call in flight. Harmless if it finished.
    pub fn cancel(&self, id: CallId) {
        if let Some(cancel) = self.desc.cancel {
            // SAFETY: the plugin's own function; ids it does not know are
            // ignored (contract).
            unsafe { cancel(id) };
        }
    }

    /// Orderly shutdown of the plugin (the code stays mapped).
    pub fn fini(&self) {
        if let Some(fini) = self.desc.fini {
            // SAFETY: the plugin's own function, called once by the host.
            unsafe { fini() };
        }
    }
}

/// Copies `bytes` into a new memfd and seals it against any change, so
/// that what `dlopen` maps is exactly what was verified.
fn sealed_copy(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Write as _;
    use std::os::unix::io::FromRawFd;
    const MFD_EXEC: libc::c_uint = 0x0010;
    let name = c"basicagent-plugin";
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: a NUL-terminated name and flags; returns a new fd or -1.
    // MFD_EXEC (Linux 6.3+) keeps the memfd executable where
    // vm.memfd_noexec would make it noexec; older kernels refuse the flag
    // with EINVAL, and there memfds are always executable.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), base | MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own descriptor with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

fn check_descriptor(
    path: &Path,
    p: *const PluginDescriptor,
) -> Result<&'static PluginDescriptor, LoadError> {
    if p.is_null() {
        return Err(LoadError::NullDescriptor {
            path: path.to_owned(),
        });
    }
    // SAFETY: every version of the descriptor starts with the two u32 of
    // VersionHeader; the plugin returned a pointer to its static data.
    let head = unsafe { &*p.cast::<VersionHeader>() };
    if head.abi_version != ffi::ABI_VERSION {
        return Err(LoadError::AbiVersion {
            path: path.to_owned(),
            found: head.abi_version,
            expected: ffi::ABI_VERSION,
        });
    }
    let needed = std::mem::size_of::<PluginDescriptor>() as u32;
    if head.size < needed {
        return Err(LoadError::DescriptorTooSmall {
            path: path.to_owned(),
            found: head.size,
            needed,
        });
    }
    // SAFETY: the plugin declares at least `needed` bytes of v1 layout;
    // the descriptor is static and immutable (contract).
    let desc = unsafe { &*p };
    if desc.call.is_none() {
        return Err(LoadError::BadDescriptor {
            path: path.to_owned(),
            reason: "call is NULL".to_owned(),
        });
    }
    Ok(desc)
}

fn read_str(path: &Path, field: &str, p: *const c_char) -> Result<String, LoadError> {
    let bad = |reason: String| LoadError::BadDescriptor {
        path: path.to_owned(),
        reason,
    };
    if p.is_null() {
        return Err(bad(format!("{field} is NULL")));
    }
    // SAFETY: the contract says every descriptor string is a static
    // NUL-terminated string.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map(str::to_owned)
        .map_err(|_| bad(format!("{field} is not UTF-8")))
}

fn read_info(path: &Path, desc: &PluginDescriptor) -> Result<PluginInfo, LoadError> {
    let name = read_str(path, "name", desc.name)?;
    let version = read_str(path, "version", desc.version)?;
    let description = read_str(path, "description", desc.description)?;
    let usage = read_str(path, "usage", desc.usage)?;
    let mut methods = Vec::new();
    if desc.methods.is_null() {
        return Err(LoadError::BadDescriptor {
            path: path.to_owned(),
            reason: "methods is NULL".to_owned(),
        });
    }
    for i in 0..=256usize {
        if i == 256 {
            return Err(LoadError::BadDescriptor {
                path: path.to_owned(),
                reason: "methods list has no NULL terminator within 256 entries".to_owned(),
            });
        }
        // SAFETY: a NULL-terminated array per the contract; we stop at the
        // terminator and never read past 256 entries.
        let m = unsafe { *desc.methods.add(i) };
        if m.0.is_null() {
            break;
        }
        let method = read_str(path, "method", m.0)?;
        split_method(&method).map_err(|e| LoadError::BadDescriptor {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        methods.push(method);
    }
    if methods.is_empty() {
        return Err(LoadError::BadDescriptor {
            path: path.to_owned(),
            reason: "serves no method".to_owned(),
        });
    }
    Ok(PluginInfo {
        name,
        version,
        description,
        methods,
        usage,
        path: path.to_owned(),
    })
}

/// The plugin directory: loads plugins on first use, keeps them for ever,
/// and loads a changed file anew on [`PluginRegistry::reload_changed`].
pub struct PluginRegistry {
    dir: PathBuf,
    settings: HostSettings,
    policy: SignaturePolicy,
    /// Held while a file is loaded, so that a plugin's `init` never runs
    /// twice for one file version, even with concurrent first calls.
    state: Mutex<RegistryState>,
}

#[derive(Default)]
struct RegistryState {
    loaded: HashMap<String, Arc<Plugin>>,
    /// Copies replaced by a reload: still mapped, their calls in flight
    /// finish there, and [`PluginRegistry::fini_all`] reaches them too.
    retired: Vec<Arc<Plugin>>,
    /// Files refused, with the version refused: not tried again (no second
    /// `dlopen`, no second `init`) until the file changes on disk. A trust
    /// refusal is checked again on every call (it costs no `dlopen`) and
    /// logged once per file version and reason.
    refused: HashMap<String, Refusal>,
    /// `fini_all` ran: plugins are not finished twice.
    finished: bool,
}

struct Refusal {
    file_id: Version,
    retcode: u32,
    reason: String,
    /// Refused by the trust rule (re-checked each time), not by loading.
    untrusted: bool,
}

impl PluginRegistry {
    /// A registry over `dir` (no signature required; a `.sig` that exists
    /// must still verify).
    pub fn new(dir: impl Into<PathBuf>, settings: HostSettings) -> Self {
        PluginRegistry::with_signatures(dir, settings, SignaturePolicy::default())
    }

    /// A registry over `dir` whose loads follow `policy`.
    pub fn with_signatures(
        dir: impl Into<PathBuf>,
        settings: HostSettings,
        policy: SignaturePolicy,
    ) -> Self {
        PluginRegistry {
            dir: dir.into(),
            settings,
            policy,
            state: Mutex::new(RegistryState::default()),
        }
    }

    /// The signature policy of every load.
    pub fn signature_policy(&self) -> &SignaturePolicy {
        &self.policy
    }

    /// The directory searched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        // Loading never panics while holding the lock in a way that leaves
        // the maps inconsistent (inserts are single operations).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The plugin serving `method`, loading its file on first use. A file
    /// refused once is refused again without being opened until it changes.
    pub fn get(&self, method: &str) -> Result<Arc<Plugin>, LoadError> {
        let file = file_name_for(method)?;
        let mut state = self.state();
        if let Some(p) = state.loaded.get(&file) {
            return Ok(Arc::clone(p));
        }
        let path = self.dir.join(&file);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => {
                return Err(LoadError::NotFound {
                    method: method.to_owned(),
                    path,
                })
            }
        };
        let file_id = Version::of(&path, &meta);
        let opened = match basicagent_fstrust::open_file(&path, Follow::No) {
            Ok(opened) => opened,
            Err(e) => return Err(note_untrusted(&mut state, file, file_id, e).0),
        };
        if let Some(r) = state
            .refused
            .get(&file)
            .filter(|r| r.file_id == file_id && !r.untrusted)
        {
            return Err(LoadError::Refused {
                path,
                retcode: r.retcode,
                reason: r.reason.clone(),
            });
        }
        let loaded =
            Plugin::load_opened(&path, opened, &self.settings, &self.policy).and_then(|plugin| {
                if plugin.serves(method) {
                    Ok(plugin)
                } else {
                    Err(LoadError::MethodNotServed {
                        path: path.clone(),
                        method: method.to_owned(),
                        served: plugin.info.methods.join(", "),
                    })
                }
            });
        match loaded {
            Ok(plugin) => {
                log::info!(
                    "loaded plugin {} {} from {} ({})",
                    plugin.info.name,
                    plugin.info.version,
                    path.display(),
                    plugin.signature
                );
                let plugin = Arc::new(plugin);
                state.refused.remove(&file);
                state.loaded.insert(file, Arc::clone(&plugin));
                Ok(plugin)
            }
            Err(e) => {
                log::error!("plugin refused: {e}");
                state.refused.insert(
                    file,
                    Refusal {
                        file_id,
                        retcode: e.retcode(),
                        reason: e.to_string(),
                        untrusted: false,
                    },
                );
                Err(e)
            }
        }
    }

    /// Loads anew every loaded plugin whose file changed on disk (new
    /// calls go to the new one; calls in flight finish in the old one).
    /// Returns what was reloaded and what failed (the old one stays).
    pub fn reload_changed(&self) -> Vec<Result<PluginInfo, LoadError>> {
        let mut state = self.state();
        let current: Vec<(String, FileId)> = state
            .loaded
            .iter()
            .map(|(k, v)| (k.clone(), v.file_id))
            .collect();
        let policy = &self.policy;
        let mut out = Vec::new();
        for (file, old_id) in current {
            let path = self.dir.join(&file);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let file_id = Version::of(&path, &meta);
            if file_id.file == old_id
                || state
                    .refused
                    .get(&file)
                    .is_some_and(|r| r.file_id == file_id && !r.untrusted)
            {
                continue;
            }
            let opened = match basicagent_fstrust::open_file(&path, Follow::No) {
                Ok(opened) => opened,
                Err(e) => {
                    // Reported once per version and reason, like the log.
                    let (e, fresh) = note_untrusted(&mut state, file, file_id, e);
                    if fresh {
                        out.push(Err(e));
                    }
                    continue;
                }
            };
            match Plugin::load_opened(&path, opened, &self.settings, policy) {
                Ok(new) => {
                    out.push(Ok(new.info.clone()));
                    state.refused.remove(&file);
                    if let Some(old) = state.loaded.insert(file, Arc::new(new)) {
                        state.retired.push(old);
                    }
                }
                Err(e) => {
                    state.refused.insert(
                        file,
                        Refusal {
                            file_id,
                            retcode: e.retcode(),
                            reason: e.to_string(),
                            untrusted: false,
                        },
                    );
                    out.push(Err(e));
                }
            }
        }
        out
    }

    /// Every `lib*_*.so` in the directory, loaded (or refused), sorted by
    /// file name: what `BasicAgentCtl -l` shows.
    pub fn scan(&self) -> Result<Vec<Result<PluginInfo, LoadError>>, LoadError> {
        Ok(self
            .available_methods()?
            .iter()
            .map(|m| self.get(m).map(|p| p.info.clone()))
            .collect())
    }

    /// The methods the directory's file names promise (`libns_name.so` →
    /// `ns.name`), sorted, without loading anything: what `init` announces.
    pub fn available_methods(&self) -> Result<Vec<String>, LoadError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| LoadError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut methods: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|file| method_for_file(&file))
            .collect();
        methods.sort();
        Ok(methods)
    }

    /// Calls `fini` once on every copy ever loaded, the copies replaced by
    /// a reload included (their commands in flight are stopped too), each
    /// mapped library once (a reload of the same inode gets glibc's old
    /// handle back). A second call does nothing.
    pub fn fini_all(&self) {
        let plugins: Vec<Arc<Plugin>> = {
            let mut state = self.state();
            if state.finished {
                return;
            }
            state.finished = true;
            state
                .retired
                .iter()
                .chain(state.loaded.values())
                .cloned()
                .collect()
        };
        let mut seen = HashSet::new();
        for p in plugins {
            if seen.insert(std::ptr::from_ref(p.desc) as usize) {
                p.fini();
            }
        }
    }

    /// How many copies `fini_all` would reach (loaded and retired, each
    /// mapped library once): for tests and `agent.info`.
    pub fn loaded_copies(&self) -> usize {
        let state = self.state();
        state
            .retired
            .iter()
            .chain(state.loaded.values())
            .map(|p| std::ptr::from_ref(p.desc) as usize)
            .collect::<HashSet<_>>()
            .len()
    }
}

/// Records a trust refusal and logs it once per file version and reason:
/// `refusing plugin PATH: RULE`. Returns the error and whether it was new.
fn note_untrusted(
    state: &mut RegistryState,
    file: String,
    file_id: Version,
    e: TrustError,
) -> (LoadError, bool) {
    let err = LoadError::Untrusted(e);
    let reason = err.to_string();
    let seen = state
        .refused
        .get(&file)
        .is_some_and(|r| r.untrusted && r.file_id == file_id && r.reason == reason);
    if !seen {
        log::error!("refusing plugin {reason}");
        state.refused.insert(
            file,
            Refusal {
                file_id,
                retcode: err.retcode(),
                reason,
                untrusted: true,
            },
        );
    }
    (err, !seen)
}

/// Where plugins are looked for when no directory is configured: the
/// first that exists of `$BASICAGENT_PLUGIN_DIR`, `/usr/lib/basicagent/plugins`,
/// and the directory of the running executable (so that
/// `target/release/BasicAgentCtl` finds the plugins built beside it).
/// An explicit directory always wins, existing or not.
pub fn plugin_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_owned();
    }
    if let Some(dir) = std::env::var_os("BASICAGENT_PLUGIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let system = Path::new(SYSTEM_PLUGIN_DIR);
    if system.is_dir() {
        return system.to_owned();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .unwrap_or_else(|| system.to_owned())
}

/// The installed plugin directory.
pub const SYSTEM_PLUGIN_DIR: &str = "/usr/lib/basicagent/plugins";
