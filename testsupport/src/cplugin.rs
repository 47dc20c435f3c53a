//! Plugins written in C for one test, compiled with the system's `cc`
//! against the ABI header alone (real dlopen of a real ELF file, as an
//! operator's third-party plugin would be).

use std::path::Path;
use std::process::Command;

/// A valid plugin serving `getinfo.ctor` whose ELF constructor writes the
/// file named by the `MARKER` macro: a test that finds no marker proves
/// no code of the file ran.
pub const CTOR_PLUGIN: &str = r#"
#include <stdio.h>
#include "basicagent_plugin.h"
__attribute__((constructor)) static void write_marker(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("constructor ran\n", f); fclose(f); }
}
static const ba_host_api *host;
static ba_status fx_init(const ba_host_api *api) { host = api; return BA_STATUS_OK; }
static void fx_call(ba_call_id call, const char *req, size_t len) {
    (void)req; (void)len;
    static const char data[] = "{\"ok\":true}";
    host->complete(call, BA_RETCODE_SUCCESS, NULL, 0, data, sizeof data - 1);
}
static const char *const fx_methods[] = {"getinfo.ctor", NULL};
static const ba_plugin_descriptor fx = {
    BA_ABI_VERSION, sizeof(ba_plugin_descriptor), "getinfo_ctor", "1.0.0",
    "constructor fixture", fx_methods, "no arguments", fx_init, fx_call, NULL, NULL,
};
const ba_plugin_descriptor *basicagent_plugin_v1(void) { return &fx; }
"#;

/// Compiles `source` into the shared object `so` (the source is written
/// beside it as `STEM.c`) with `-Wall -Wextra -Werror -std=c11`, the
/// header's folder on the include path and each `(NAME, VALUE)` of
/// `defines` as `-DNAME=VALUE`. Panics if `cc` fails.
pub fn compile(source: &str, so: &Path, defines: &[(&str, String)]) {
    let src = so.with_extension("c");
    std::fs::write(&src, source).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let include = Path::new(basicagent_abi::HEADER_PATH)
        .parent()
        .expect("the header has a folder");
    let mut cc = Command::new("cc");
    cc.args([
        "-Wall", "-Wextra", "-Werror", "-std=c11", "-fPIC", "-shared",
    ])
    .arg("-I")
    .arg(include);
    for (name, value) in defines {
        cc.arg(format!("-D{name}={value}"));
    }
    let ok = cc
        .arg("-o")
        .arg(so)
        .arg(&src)
        .status()
        .expect("the C compiler runs")
        .success();
    assert!(ok, "cc failed for {}", src.display());
}

/// [`CTOR_PLUGIN`] (or another source using `MARKER`) compiled into `so`,
/// its constructor writing `marker`.
pub fn compile_marking(source: &str, so: &Path, marker: &Path) {
    compile(
        source,
        so,
        &[("MARKER", format!("\"{}\"", marker.display()))],
    );
}
