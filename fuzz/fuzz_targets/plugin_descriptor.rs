//! Fuzzes the plugin descriptor check of the loader (`Plugin::load`):
//! a shim `.so` (built by `build.rs`) returns a descriptor made from the
//! input: any ABI version and size, NULL or arbitrary (non-UTF-8) strings,
//! up to 300 method names with or without a terminator within 256 entries,
//! NULL or present `call`, an `init` that succeeds or fails. Nothing may
//! panic; an accepted plugin serves only valid method names.
#![deny(clippy::undocumented_unsafe_blocks)]
#![no_main]

use std::ffi::{c_char, CString};
use std::path::Path;
use std::sync::OnceLock;

use basicagent_abi::ffi::{CallId, HostApi, PluginDescriptor, StaticStr, Status};
use basicagent_abi::host::HostSettings;
use basicagent_abi::loader::{split_method, Plugin};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const SHIM: &str = env!("FUZZ_DESCRIPTOR_SO");

#[derive(Debug, Arbitrary)]
struct Input {
    abi_version: Option<u32>,
    size_delta: i8,
    name: Option<Vec<u8>>,
    version: Option<Vec<u8>>,
    description: Option<Vec<u8>>,
    usage: Option<Vec<u8>>,
    methods: Option<Vec<Vec<u8>>>,
    repeat_last: u16,
    has_call: bool,
    init: u8,
}

// SAFETY (the three stubs below): they take no pointer they read; the
// loader calls them as the ABI types say.
unsafe extern "C" fn call(_: CallId, _: *const c_char, _: usize) {}
unsafe extern "C" fn init_ok(_: *const HostApi) -> Status {
    0
}
unsafe extern "C" fn init_fail(_: *const HostApi) -> Status {
    3
}

type Setter = unsafe extern "C" fn(*const PluginDescriptor);

fn setter() -> Setter {
    static SET: OnceLock<Setter> = OnceLock::new();
    *SET.get_or_init(|| {
        // SAFETY: the shim is our own C file; the symbol has this type.
        unsafe {
            let lib = libloading::Library::new(SHIM).unwrap_or_else(|e| panic!("{SHIM}: {e}"));
            let f: Setter = *lib
                .get::<Setter>(b"fuzz_set_descriptor\0")
                .unwrap_or_else(|e| panic!("{SHIM}: {e}"));
            std::mem::forget(lib);
            f
        }
    })
}

fn c_string(bytes: Option<Vec<u8>>) -> Option<CString> {
    bytes.map(|mut b| {
        b.retain(|&c| c != 0);
        CString::new(b).unwrap_or_default()
    })
}

fn ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

fuzz_target!(|input: Input| {
    let name = c_string(input.name);
    let version = c_string(input.version);
    let description = c_string(input.description);
    let usage = c_string(input.usage);
    let mut method_strings: Vec<CString> = input
        .methods
        .unwrap_or_default()
        .into_iter()
        .map(|m| c_string(Some(m)).unwrap_or_default())
        .collect();
    if let Some(last) = method_strings.last().cloned() {
        for _ in 0..(input.repeat_last % 300) {
            method_strings.push(last.clone());
        }
    }
    method_strings.truncate(300);
    let mut methods: Vec<StaticStr> = method_strings
        .iter()
        .map(|m| StaticStr(m.as_ptr()))
        .collect();
    // A list shorter than 256 entries is always terminated (the loader
    // reads at most 256 entries; reading past our array would be our bug).
    methods.push(StaticStr(std::ptr::null()));
    let size = std::mem::size_of::<PluginDescriptor>() as i64 + i64::from(input.size_delta);
    let desc = Box::new(PluginDescriptor {
        abi_version: input.abi_version.unwrap_or(1),
        size: size.clamp(0, i64::from(u32::MAX)) as u32,
        name: ptr(&name),
        version: ptr(&version),
        description: ptr(&description),
        methods: if input.init == 255 {
            std::ptr::null()
        } else {
            methods.as_ptr()
        },
        usage: ptr(&usage),
        init: match input.init % 3 {
            0 => None,
            1 => Some(init_ok),
            _ => Some(init_fail),
        },
        call: if input.has_call { Some(call) } else { None },
        cancel: None,
        fini: None,
    });
    // SAFETY: the descriptor outlives every use: the loader only reads it
    // inside `load`, and the plugin is dropped below before `desc`.
    unsafe { setter()(&*desc) };
    let loaded = Plugin::load(Path::new(SHIM), &HostSettings::default(), false);
    if let Ok(plugin) = &loaded {
        assert!(!plugin.info().methods.is_empty());
        for m in &plugin.info().methods {
            assert!(split_method(m).is_ok(), "accepted method {m:?}");
        }
        assert!(plugin.info().methods.len() < 256);
    }
    drop(loaded);
    // SAFETY: as above; clears the pointer before the descriptor is freed.
    unsafe { setter()(std::ptr::null()) };
    drop(desc);
});
