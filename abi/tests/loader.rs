//! The loader against real shared objects compiled here with the system C
//! compiler from the header alone: each refusal names the file and the
//! reason, nothing crashes, and the header's layout matches the Rust mirror.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use basicagent_abi::ffi::{HostApi, PluginDescriptor};
use basicagent_abi::{retcode, Completion, HostSettings, LoadError, Plugin, PluginRegistry};

/// A C plugin whose descriptor fields can be overridden by macros.
const TEMPLATE: &str = r#"
#include <string.h>
#include "basicagent_plugin.h"
#ifndef ABI
#define ABI BA_ABI_VERSION
#endif
#ifndef SIZE
#define SIZE sizeof(ba_plugin_descriptor)
#endif
#ifndef METHOD
#define METHOD "getinfo.fixture"
#endif
#ifndef VERSION
#define VERSION "1.0.0"
#endif
#ifndef INIT_STATUS
#define INIT_STATUS BA_STATUS_OK
#endif
static const ba_host_api *host;
static ba_status fx_init(const ba_host_api *api) { host = api; return INIT_STATUS; }
static void fx_call(ba_call_id call, const char *req, size_t len) {
    (void)req; (void)len;
    static const char data[] = "{\"version\":\"" VERSION "\"}";
    host->complete(call, BA_RETCODE_SUCCESS, NULL, 0, data, sizeof data - 1);
}
static const char *const fx_methods[] = {METHOD, NULL};
static const ba_plugin_descriptor fx = {
    ABI, SIZE, "getinfo_fixture", VERSION, "loader fixture", fx_methods,
    "no arguments", fx_init, fx_call, NULL, NULL,
};
#ifndef NO_ENTRY
const ba_plugin_descriptor *basicagent_plugin_v1(void) {
#ifdef NULL_DESCRIPTOR
    return fx.abi_version == 12345 ? &fx : NULL;
#else
    return &fx;
#endif
}
#else
const ba_plugin_descriptor *some_other_symbol(void) { return &fx; }
#endif
"#;

fn compile(dir: &Path, file: &str, defines: &[&str]) -> PathBuf {
    let src = dir.join(format!("{file}.c"));
    std::fs::write(&src, TEMPLATE).unwrap();
    let out = dir.join(file);
    let include = Path::new(basicagent_abi::HEADER_PATH)
        .parent()
        .unwrap()
        .to_owned();
    let status = Command::new("cc")
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-std=c11",
            "-fPIC",
            "-shared",
        ])
        .arg("-I")
        .arg(include)
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("the C compiler runs");
    assert!(status.success(), "cc failed for {file} {defines:?}");
    // Whatever the umask: the trust rule refuses group/world-writable files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    out
}

fn call(plugin: &Plugin, request: &str) -> Completion {
    let (tx, rx) = mpsc::channel();
    plugin.call(
        request.as_bytes(),
        Box::new(move |c| {
            tx.send(c).unwrap();
        }),
    );
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the plugin completes")
}

fn load(path: &Path) -> Result<Plugin, LoadError> {
    Plugin::load(path, &HostSettings::default(), false)
}

#[test]
fn a_good_c_plugin_loads_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile(dir.path(), "libgetinfo_fixture.so", &[]);
    let plugin = load(&so).unwrap();
    assert_eq!(plugin.info().name, "getinfo_fixture");
    assert_eq!(plugin.info().methods, vec!["getinfo.fixture".to_owned()]);
    let c = call(&plugin, r#"{"method":"getinfo.fixture"}"#);
    assert_eq!(c.retcode, retcode::SUCCESS);
    assert_eq!(c.data.as_deref(), Some(r#"{"version":"1.0.0"}"#));
}

#[test]
fn a_file_that_is_not_elf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libgetinfo_text.so");
    std::fs::write(&path, "#!/bin/sh\necho not a library\n").unwrap();
    let err = load(&path).unwrap_err();
    assert!(matches!(err, LoadError::NotElf { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("libgetinfo_text.so: not a shared object"),
        "{err}"
    );
    assert_eq!(err.retcode(), retcode::PLUGIN_FAILURE);
    // An empty file too.
    std::fs::write(&path, "").unwrap();
    assert!(matches!(load(&path).unwrap_err(), LoadError::NotElf { .. }));
}

#[test]
fn a_truncated_elf_file_is_refused_by_dlopen() {
    let dir = tempfile::tempdir().unwrap();
    let good = compile(dir.path(), "libgetinfo_fixture.so", &[]);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("libgetinfo_cut.so");
    std::fs::write(&cut, &bytes[..200]).unwrap();
    let err = load(&cut).unwrap_err();
    assert!(matches!(err, LoadError::Dlopen { .. }), "{err}");
    assert!(
        err.to_string().contains("libgetinfo_cut.so: dlopen failed"),
        "{err}"
    );
}

#[test]
fn a_library_without_the_entry_symbol_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile(dir.path(), "libgetinfo_noentry.so", &["NO_ENTRY"]);
    let err = load(&so).unwrap_err();
    assert!(matches!(err, LoadError::NoEntry { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no entry symbol basicagent_plugin_v1"),
        "{err}"
    );
}

#[test]
fn another_abi_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile(dir.path(), "libgetinfo_v2.so", &["ABI=2u"]);
    let err = load(&so).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::AbiVersion {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("plugin ABI version 2, this host speaks 1"),
        "{err}"
    );
}

#[test]
fn a_descriptor_too_small_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile(dir.path(), "libgetinfo_small.so", &["SIZE=8u"]);
    let err = load(&so).unwrap_err();
    assert!(
        matches!(err, LoadError::DescriptorTooSmall { found: 8, .. }),
        "{err}"
    );
}

#[test]
fn a_null_descriptor_and_a_failed_init_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile(dir.path(), "libgetinfo_null.so", &["NULL_DESCRIPTOR"]);
    assert!(matches!(
        load(&so).unwrap_err(),
        LoadError::NullDescriptor { .. }
    ));
    let so = compile(
        dir.path(),
        "libgetinfo_noinit.so",
        &["INIT_STATUS=BA_STATUS_FAILED"],
    );
    assert!(matches!(
        load(&so).unwrap_err(),
        LoadError::InitFailed { .. }
    ));
}

#[test]
fn a_descriptor_with_an_invalid_method_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile(
        dir.path(),
        "libgetinfo_badname.so",
        &["METHOD=\"../etc/passwd\""],
    );
    let err = load(&so).unwrap_err();
    assert!(matches!(err, LoadError::BadDescriptor { .. }), "{err}");
}

#[test]
fn path_like_and_unknown_methods_are_3022_without_touching_files() {
    let dir = tempfile::tempdir().unwrap();
    let reg = PluginRegistry::new(dir.path(), HostSettings::default());
    for bad in [
        "../../etc/passwd",
        "getinfo./x",
        "getinfo.Users",
        "getinfo",
        "getinfo.users.x",
        ".users",
        "getinfo.",
        "9x.y",
        "getinfo.a\0b",
        "getinfo.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        let err = reg.get(bad).unwrap_err();
        assert!(matches!(err, LoadError::InvalidMethod(_)), "{bad}: {err}");
        assert_eq!(err.retcode(), retcode::UNKNOWN_METHOD);
    }
    let err = reg.get("getinfo.nothere").unwrap_err();
    assert!(matches!(err, LoadError::NotFound { .. }), "{err}");
    assert_eq!(err.retcode(), retcode::UNKNOWN_METHOD);
    assert!(
        err.to_string().contains("libgetinfo_nothere.so not found"),
        "{err}"
    );
}

#[test]
fn a_file_that_does_not_serve_the_method_is_3022() {
    let dir = tempfile::tempdir().unwrap();
    compile(dir.path(), "libgetinfo_other.so", &[]);
    let reg = PluginRegistry::new(dir.path(), HostSettings::default());
    let err = reg.get("getinfo.other").unwrap_err();
    assert!(matches!(err, LoadError::MethodNotServed { .. }), "{err}");
    assert_eq!(err.retcode(), retcode::UNKNOWN_METHOD);
}

#[test]
fn the_registry_loads_on_first_use_and_reloads_a_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let reg = PluginRegistry::new(dir.path(), HostSettings::default());
    assert!(matches!(
        reg.get("getinfo.fixture").unwrap_err(),
        LoadError::NotFound { .. }
    ));
    // Dropped in while "running": served without a restart.
    let staging = tempfile::tempdir().unwrap();
    let v1 = compile(staging.path(), "v1.so", &[]);
    std::fs::rename(&v1, dir.path().join("libgetinfo_fixture.so")).unwrap();
    let c = call(
        &reg.get("getinfo.fixture").unwrap(),
        r#"{"method":"getinfo.fixture"}"#,
    );
    assert_eq!(c.data.as_deref(), Some(r#"{"version":"1.0.0"}"#));
    // Nothing changed: nothing reloaded.
    assert!(reg.reload_changed().is_empty());
    // Replaced by rename (the documented way): the new version is served.
    let v2 = compile(staging.path(), "v2.so", &["VERSION=\"2.0.0\""]);
    std::fs::rename(&v2, dir.path().join("libgetinfo_fixture.so")).unwrap();
    let reloaded = reg.reload_changed();
    assert_eq!(reloaded.len(), 1);
    assert_eq!(reloaded[0].as_ref().unwrap().version, "2.0.0");
    let c = call(
        &reg.get("getinfo.fixture").unwrap(),
        r#"{"method":"getinfo.fixture"}"#,
    );
    assert_eq!(c.data.as_deref(), Some(r#"{"version":"2.0.0"}"#));
    // Replaced by a broken file: refused, the old one keeps serving.
    let tmp = staging.path().join("broken.so");
    std::fs::write(&tmp, "garbage").unwrap();
    std::fs::rename(&tmp, dir.path().join("libgetinfo_fixture.so")).unwrap();
    let reloaded = reg.reload_changed();
    assert!(matches!(reloaded[0], Err(LoadError::NotElf { .. })));
    let c = call(
        &reg.get("getinfo.fixture").unwrap(),
        r#"{"method":"getinfo.fixture"}"#,
    );
    assert_eq!(c.data.as_deref(), Some(r#"{"version":"2.0.0"}"#));
}

#[test]
fn a_refused_file_is_not_opened_again_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    // init fails: the refusal is remembered, init does not run again.
    let bad = compile(staging.path(), "bad.so", &["INIT_STATUS=BA_STATUS_FAILED"]);
    std::fs::rename(&bad, dir.path().join("libgetinfo_fixture.so")).unwrap();
    let reg = PluginRegistry::new(dir.path(), HostSettings::default());
    assert!(matches!(
        reg.get("getinfo.fixture").unwrap_err(),
        LoadError::InitFailed { .. }
    ));
    let again = reg.get("getinfo.fixture").unwrap_err();
    assert!(matches!(again, LoadError::Refused { .. }), "{again}");
    assert_eq!(again.retcode(), retcode::PLUGIN_FAILURE);
    assert!(again.to_string().contains("init failed"), "{again}");
    // Fixed on disk (by rename): loaded, under a new name for glibc.
    let good = compile(staging.path(), "good.so", &["VERSION=\"3.0.0\""]);
    std::fs::rename(&good, dir.path().join("libgetinfo_fixture.so")).unwrap();
    let c = call(
        &reg.get("getinfo.fixture").unwrap(),
        r#"{"method":"getinfo.fixture"}"#,
    );
    assert_eq!(c.data.as_deref(), Some(r#"{"version":"3.0.0"}"#));
}

#[test]
fn the_scan_lists_good_plugins_and_refuses_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    compile(dir.path(), "libgetinfo_fixture.so", &[]);
    std::fs::write(dir.path().join("libgetinfo_junk.so"), "junk").unwrap();
    std::fs::write(dir.path().join("README"), "not a plugin").unwrap();
    let reg = PluginRegistry::new(dir.path(), HostSettings::default());
    let found = reg.scan().unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].as_ref().unwrap().name, "getinfo_fixture");
    assert!(matches!(found[1], Err(LoadError::NotElf { .. })));
}

/// The C compiler's view of the two structs must equal the Rust mirror.
#[test]
fn the_header_layout_matches_the_rust_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include "basicagent_plugin.h"
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(ba_host_api), offsetof(ba_host_api, log),
           offsetof(ba_host_api, complete), offsetof(ba_host_api, config),
           offsetof(ba_host_api, config_len), offsetof(ba_host_api, max_log_level), sizeof(ba_call_id));
    printf("%zu %zu %zu %zu %zu %zu %d %d %d %d %d %d %d %d\n", offsetof(ba_host_api, param_str),
           offsetof(ba_host_api, param_int64), offsetof(ba_host_api, param_double),
           offsetof(ba_host_api, param_bool), offsetof(ba_host_api, args_argv),
           sizeof(ba_status), BA_STATUS_OK, BA_STATUS_UNKNOWN_CALL, BA_STATUS_INVALID_ARGUMENT,
           BA_STATUS_FAILED, BA_STATUS_NOT_FOUND, BA_STATUS_WRONG_TYPE, BA_STATUS_BAD_REQUEST,
           BA_STATUS_BAD_ARGS);
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(ba_plugin_descriptor),
           offsetof(ba_plugin_descriptor, name), offsetof(ba_plugin_descriptor, version),
           offsetof(ba_plugin_descriptor, description), offsetof(ba_plugin_descriptor, methods),
           offsetof(ba_plugin_descriptor, usage), offsetof(ba_plugin_descriptor, init),
           offsetof(ba_plugin_descriptor, call), offsetof(ba_plugin_descriptor, cancel),
           offsetof(ba_plugin_descriptor, fini));
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.path().join("layout");
    let include = Path::new(basicagent_abi::HEADER_PATH)
        .parent()
        .unwrap()
        .to_owned();
    let ok = Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-std=c11", "-I"])
        .arg(include)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = String::from_utf8(Command::new(&exe).output().unwrap().stdout).unwrap();
    use std::mem::{offset_of, size_of};
    let host = format!(
        "{} {} {} {} {} {} {}",
        size_of::<HostApi>(),
        offset_of!(HostApi, log),
        offset_of!(HostApi, complete),
        offset_of!(HostApi, config),
        offset_of!(HostApi, config_len),
        offset_of!(HostApi, max_log_level),
        size_of::<u64>()
    );
    use basicagent_abi::ffi;
    let readers = format!(
        "{} {} {} {} {} {} {} {} {} {} {} {} {} {}",
        offset_of!(HostApi, param_str),
        offset_of!(HostApi, param_int64),
        offset_of!(HostApi, param_double),
        offset_of!(HostApi, param_bool),
        offset_of!(HostApi, args_argv),
        size_of::<ffi::Status>(),
        ffi::STATUS_OK,
        ffi::STATUS_UNKNOWN_CALL,
        ffi::STATUS_INVALID_ARGUMENT,
        ffi::STATUS_FAILED,
        ffi::STATUS_NOT_FOUND,
        ffi::STATUS_WRONG_TYPE,
        ffi::STATUS_BAD_REQUEST,
        ffi::STATUS_BAD_ARGS,
    );
    // The 1.0 table ends where the readers begin: what an old host says.
    assert_eq!(
        ffi::HOST_API_V1_0_SIZE as usize,
        offset_of!(HostApi, param_str)
    );
    let desc = format!(
        "{} {} {} {} {} {} {} {} {} {}",
        size_of::<PluginDescriptor>(),
        offset_of!(PluginDescriptor, name),
        offset_of!(PluginDescriptor, version),
        offset_of!(PluginDescriptor, description),
        offset_of!(PluginDescriptor, methods),
        offset_of!(PluginDescriptor, usage),
        offset_of!(PluginDescriptor, init),
        offset_of!(PluginDescriptor, call),
        offset_of!(PluginDescriptor, cancel),
        offset_of!(PluginDescriptor, fini)
    );
    assert_eq!(out, format!("{host}\n{readers}\n{desc}\n"));
}

/// A C plugin that reads its request through the ABI 1.1 readers only and
/// answers what it read; it also tries a NULL message with a length.
const READERS: &str = r#"
#include <stdio.h>
#include <string.h>
#include "basicagent_plugin.h"
static const ba_host_api *host;
static ba_call_id last;
static int old_host;
static ba_status rd_init(const ba_host_api *api) {
    host = api;
    old_host = !BA_HOST_HAS(api, args_argv);
    return old_host ? BA_STATUS_FAILED : BA_STATUS_OK;
}
static void rd_call(ba_call_id call, const char *req, size_t len) {
    (void)req; (void)len;
    const char *s = "unset"; size_t slen = 5;
    int64_t i = -1; double d = -1; int b = -1, argc = -1;
    char **argv = NULL;
    int st_s = host->param_str(call, "s", &s, &slen);
    int st_i = host->param_int64(call, "i", &i);
    int st_d = host->param_double(call, "d", &d);
    int st_b = host->param_bool(call, "b", &b);
    int st_a = host->args_argv(call, &argc, &argv);
    int st_null = host->param_str(call, NULL, &s, &slen);
    const char *x; int st_after = last ? (int)host->param_str(last, "s", &x, NULL) : -1;
    if (st_b == BA_STATUS_OK && b == 1 && st_i == BA_STATUS_OK && i == 99) {
        /* asked to misuse complete: NULL message with a length */
        int st = host->complete(call, BA_RETCODE_SUCCESS, NULL, 5, NULL, 0);
        int again = host->complete(call, BA_RETCODE_SUCCESS, NULL, 0, NULL, 0);
        char m[64];
        snprintf(m, sizeof m, "complete gave %d then %d", st, again);
        host->log(BA_LOG_ERROR, m, strlen(m));
        return;
    }
    char data[1024];
    int n = snprintf(data, sizeof data,
        "{\"st\":[%d,%d,%d,%d,%d,%d,%d],\"s\":\"%.*s\",\"slen\":%zu,\"i\":%lld,\"d\":%g,\"b\":%d,\"argc\":%d,\"argv\":[",
        st_s, st_i, st_d, st_b, st_a, st_null, st_after, (int)slen, s, slen, (long long)i, d, b, argc);
    for (int k = 0; st_a == BA_STATUS_OK && k < argc; k++) {
        n += snprintf(data + n, sizeof data - (size_t)n, "%s\"%s\"", k ? "," : "", argv[k]);
    }
    n += snprintf(data + n, sizeof data - (size_t)n, "],\"nul_end\":%d}",
                  st_a == BA_STATUS_OK && argv[argc] == NULL);
    last = call;
    host->complete(call, BA_RETCODE_SUCCESS, NULL, 0, data, (size_t)n);
}
static const char *const rd_methods[] = {"getinfo.readers", NULL};
static const ba_plugin_descriptor rd = {
    BA_ABI_VERSION, sizeof(ba_plugin_descriptor), "getinfo_readers", "1.1.0",
    "readers fixture", rd_methods, "no arguments", rd_init, rd_call, NULL, NULL,
};
const ba_plugin_descriptor *basicagent_plugin_v1(void) { return &rd; }
"#;

fn compile_source(dir: &Path, file: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{file}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(file);
    let include = Path::new(basicagent_abi::HEADER_PATH).parent().unwrap();
    let ok = Command::new("cc")
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-std=c11",
            "-fPIC",
            "-shared",
            "-I",
        ])
        .arg(include)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cc failed for {file}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    out
}

fn data(c: &Completion) -> serde_json::Value {
    serde_json::from_str(c.data.as_deref().unwrap_or("null")).unwrap()
}

#[test]
fn a_c_plugin_reads_its_request_through_the_readers_without_a_json_parser() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile_source(dir.path(), "libgetinfo_readers.so", READERS);
    let plugin = load(&so).unwrap();
    let c = call(
        &plugin,
        r#"{"id":7,"method":"getinfo.readers","s":"a\u00e9b","i":-42,"d":2.5,"b":false,"args":"-rr -n '1 2' -- \"x y\""}"#,
    );
    let v = data(&c);
    // OK x5, NULL key INVALID_ARGUMENT, no earlier call (-1).
    assert_eq!(v["st"], serde_json::json!([0, 0, 0, 0, 0, 2, -1]), "{v}");
    assert_eq!(v["s"], "aéb");
    assert_eq!(v["slen"], 4);
    assert_eq!(v["i"], -42);
    assert_eq!(v["d"], 2.5);
    assert_eq!(v["b"], 0);
    assert_eq!(
        v["argv"],
        serde_json::json!(["getinfo.readers", "-rr", "-n", "1 2", "--", "x y"])
    );
    assert_eq!(v["argc"], 6);
    assert_eq!(v["nul_end"], 1);

    // Absent, null and mistyped values; the earlier call's memory is gone
    // (UNKNOWN_CALL), and outputs are left as they were.
    let c = call(&plugin, r#"{"s":null,"i":1.5,"d":"2","b":1,"args":7}"#);
    let v = data(&c);
    assert_eq!(v["st"], serde_json::json!([4, 5, 5, 5, 5, 2, 1]), "{v}");
    assert_eq!(
        (v["s"].as_str(), v["i"].as_i64(), v["b"].as_i64()),
        (Some("unset"), Some(-1), Some(-1))
    );
    // Not one object: every reader says BAD_REQUEST.
    let c = call(&plugin, r#"{"s":"a","s":"b"}"#);
    assert_eq!(data(&c)["st"], serde_json::json!([6, 6, 6, 6, 6, 2, 1]));
    // An unterminated quote in args.
    let c = call(&plugin, r#"{"args":"-a 'x"}"#);
    assert_eq!(data(&c)["st"][4], 7);
    // No args: argv is the method alone (else the plugin's name).
    let c = call(&plugin, r#"{}"#);
    assert_eq!(data(&c)["argv"], serde_json::json!(["getinfo_readers"]));
}

#[test]
fn complete_with_a_null_message_of_nonzero_length_answers_3025_and_ends_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile_source(dir.path(), "libgetinfo_readers.so", READERS);
    let plugin = load(&so).unwrap();
    let c = call(&plugin, r#"{"b":true,"i":99}"#);
    assert_eq!(c.retcode, retcode::PLUGIN_FAILURE);
    assert_eq!(
        c.message,
        "Plugin failure: complete() got a NULL message with a length > 0 (retcode 2)"
    );
}

#[test]
fn a_1_1_plugin_sees_a_1_0_host_table_by_its_size_and_an_old_plugin_runs_on_this_host() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile_source(dir.path(), "libgetinfo_readers.so", READERS);
    // SAFETY: a fixture compiled above from the header.
    let lib = unsafe { libloading::Library::new(&so) }.unwrap();
    // SAFETY: the entry symbol has the header's type.
    let entry: libloading::Symbol<basicagent_abi::ffi::EntryV1> =
        unsafe { lib.get(basicagent_abi::ffi::ENTRY_SYMBOL_V1) }.unwrap();
    // SAFETY: calling the fixture's entry and init with a valid table.
    let desc = unsafe { &*entry() };
    let new = basicagent_abi::host::host_api(&HostSettings::default());
    let old = HostApi {
        size: basicagent_abi::ffi::HOST_API_V1_0_SIZE,
        param_str: None,
        param_int64: None,
        param_double: None,
        param_bool: None,
        args_argv: None,
        ..*new
    };
    // SAFETY: both tables are valid for the test's duration.
    unsafe {
        assert_eq!(desc.init.unwrap()(&old), basicagent_abi::ffi::STATUS_FAILED);
        assert_eq!(desc.init.unwrap()(new), basicagent_abi::ffi::STATUS_OK);
    }
    // A plugin built before the readers (TEMPLATE uses none) loads and answers.
    let old_plugin = compile(dir.path(), "libgetinfo_fixture.so", &[]);
    let c = call(&load(&old_plugin).unwrap(), "{}");
    assert_eq!(c.retcode, retcode::SUCCESS);
}
