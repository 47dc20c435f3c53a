//! The request readers of ABI 1.1 (`param_*`, `args_argv`): one pending
//! call's request, its top-level members parsed on first use, and the
//! argv built from its `"args"` by [`crate::args::split_args`].
//!
//! Key design decision: this is the one place where `abi` reads JSON, and
//! it reads on the plugin's behalf what a plugin would otherwise parse
//! itself: top-level members of the request it was handed, lazily (a
//! plugin that never asks pays a copy of the request, not a parse).
//! Everything handed out lives in this state, which the registry drops
//! when the call is completed: the lifetime the header promises.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int};
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::args::split_args;
use crate::ffi::{self, Status};

/// One top-level member's value, as the readers need it.
enum Param {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    /// The unescaped text followed by one NUL byte.
    Str(Box<[u8]>),
    /// An array or object: only ever `WRONG_TYPE`.
    Other,
}

/// The parsed top level of a request: the members, or the reason it has
/// none (`BAD_REQUEST`).
type Members = Result<HashMap<String, Param>, Status>;

/// The argv handed to `args_argv`: one buffer of NUL-terminated words and
/// an array of pointers into it ending with NULL. Both are allocations
/// this struct owns through raw pointers, because the plugin may write to
/// them (getopt permutes the array); Rust never reads them again and only
/// frees them on drop.
struct Argv {
    argc: c_int,
    array: *mut [*mut c_char],
    words: *mut [u8],
}

// SAFETY: the two allocations are owned by this value alone; the host
// never reads them after building them (the plugin may, from any thread,
// under its own contract), and they are freed once, on drop.
unsafe impl Send for Argv {}
// SAFETY: as above: no `&self` method reads or writes through the pointers.
unsafe impl Sync for Argv {}

impl Drop for Argv {
    fn drop(&mut self) {
        // SAFETY: both pointers come from `Box::into_raw` in `Argv::new`
        // and are freed only here.
        unsafe {
            drop(Box::from_raw(self.array));
            drop(Box::from_raw(self.words));
        }
    }
}

impl Argv {
    fn new(words: &[String]) -> Result<Argv, Status> {
        if words.iter().any(|w| w.as_bytes().contains(&0)) {
            return Err(ffi::STATUS_BAD_ARGS);
        }
        let argc = c_int::try_from(words.len()).map_err(|_| ffi::STATUS_BAD_ARGS)?;
        let total = words.iter().map(|w| w.len() + 1).sum::<usize>();
        let mut buf = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(words.len());
        for w in words {
            starts.push(buf.len());
            buf.extend_from_slice(w.as_bytes());
            buf.push(0);
        }
        let words_ptr: *mut [u8] = Box::into_raw(buf.into_boxed_slice());
        let base = words_ptr.cast::<u8>();
        let mut array: Vec<*mut c_char> = starts
            .iter()
            // SAFETY: every start is within the buffer just allocated.
            .map(|&s| unsafe { base.add(s) }.cast::<c_char>())
            .collect();
        array.push(std::ptr::null_mut());
        Ok(Argv {
            argc,
            array: Box::into_raw(array.into_boxed_slice()),
            words: words_ptr,
        })
    }
}

/// What the registry keeps per pending call for the readers.
pub(crate) struct CallState {
    request: Box<[u8]>,
    name: Arc<str>,
    members: OnceLock<Members>,
    argv: OnceLock<Result<Argv, Status>>,
}

impl CallState {
    pub(crate) fn new(request: &[u8], name: Arc<str>) -> CallState {
        CallState {
            request: request.into(),
            name,
            members: OnceLock::new(),
            argv: OnceLock::new(),
        }
    }

    fn members(&self) -> Result<&HashMap<String, Param>, Status> {
        self.members
            .get_or_init(|| parse_members(&self.request))
            .as_ref()
            .map_err(|s| *s)
    }

    fn get(&self, key: &[u8]) -> Result<&Param, Status> {
        let members = self.members()?;
        let key = std::str::from_utf8(key).map_err(|_| ffi::STATUS_NOT_FOUND)?;
        match members.get(key) {
            None | Some(Param::Null) => Err(ffi::STATUS_NOT_FOUND),
            Some(p) => Ok(p),
        }
    }

    /// A string member: its NUL-terminated bytes and their length.
    pub(crate) fn string(&self, key: &[u8]) -> Result<(*const c_char, usize), Status> {
        match self.get(key)? {
            Param::Str(bytes) => Ok((bytes.as_ptr().cast::<c_char>(), bytes.len() - 1)),
            _ => Err(ffi::STATUS_WRONG_TYPE),
        }
    }

    /// An integer member that fits i64 (no fraction, no exponent).
    pub(crate) fn int64(&self, key: &[u8]) -> Result<i64, Status> {
        match self.get(key)? {
            Param::Number(n) => n.as_i64().ok_or(ffi::STATUS_WRONG_TYPE),
            _ => Err(ffi::STATUS_WRONG_TYPE),
        }
    }

    /// Any number member, as f64.
    pub(crate) fn double(&self, key: &[u8]) -> Result<f64, Status> {
        match self.get(key)? {
            Param::Number(n) => n.as_f64().ok_or(ffi::STATUS_WRONG_TYPE),
            _ => Err(ffi::STATUS_WRONG_TYPE),
        }
    }

    /// A boolean member.
    pub(crate) fn boolean(&self, key: &[u8]) -> Result<bool, Status> {
        match self.get(key)? {
            Param::Bool(b) => Ok(*b),
            _ => Err(ffi::STATUS_WRONG_TYPE),
        }
    }

    /// The argv of `"args"`, built once per call.
    pub(crate) fn argv(&self) -> Result<(c_int, *mut *mut c_char), Status> {
        let argv = self
            .argv
            .get_or_init(|| self.build_argv())
            .as_ref()
            .map_err(|s| *s)?;
        Ok((argv.argc, argv.array.cast::<*mut c_char>()))
    }

    fn build_argv(&self) -> Result<Argv, Status> {
        let members = self.members()?;
        let argv0 = match members.get("method") {
            Some(Param::Str(m)) if !m[..m.len() - 1].contains(&0) => {
                String::from_utf8_lossy(&m[..m.len() - 1]).into_owned()
            }
            _ => self.name.to_string(),
        };
        let mut words = vec![argv0];
        match members.get("args") {
            None | Some(Param::Null) => {}
            Some(Param::Str(a)) => {
                let text =
                    std::str::from_utf8(&a[..a.len() - 1]).map_err(|_| ffi::STATUS_BAD_ARGS)?;
                words.extend(split_args(text).map_err(|_| ffi::STATUS_BAD_ARGS)?);
            }
            Some(_) => return Err(ffi::STATUS_WRONG_TYPE),
        }
        Argv::new(&words)
    }
}

/// The request's top-level members; a request that is not one object with
/// distinct keys (or has trailing bytes) is `BAD_REQUEST` as a whole.
fn parse_members(request: &[u8]) -> Members {
    let mut de = serde_json::Deserializer::from_slice(request);
    let members = (&mut de)
        .deserialize_map(TopLevel)
        .map_err(|_| ffi::STATUS_BAD_REQUEST)?;
    de.end().map_err(|_| ffi::STATUS_BAD_REQUEST)?;
    Ok(members)
}

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = HashMap<String, Param>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with distinct keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = HashMap::new();
        let mut seen = HashSet::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let param = match value {
                Value::Null => Param::Null,
                Value::Bool(b) => Param::Bool(b),
                Value::Number(n) => Param::Number(n),
                Value::String(s) => {
                    let mut bytes = s.into_bytes();
                    bytes.push(0);
                    Param::Str(bytes.into_boxed_slice())
                }
                Value::Array(_) | Value::Object(_) => Param::Other,
            };
            out.insert(key, param);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn st(request: &str) -> CallState {
        CallState::new(request.as_bytes(), Arc::from("getinfo_x"))
    }

    fn text(state: &CallState, key: &str) -> Result<Vec<u8>, Status> {
        state.string(key.as_bytes()).map(|(p, n)| {
            // SAFETY: the pointer and length come from the state, alive here.
            unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) }.to_vec()
        })
    }

    fn words(state: &CallState) -> Result<Vec<String>, Status> {
        let (argc, argv) = state.argv()?;
        Ok((0..argc as usize)
            .map(|i| {
                // SAFETY: argc entries of NUL-terminated words, then NULL.
                unsafe { CStr::from_ptr(*argv.add(i)) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect())
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_reader() {
        // A small deterministic mutation fuzz over a seed request.
        let seed = br#"{"method":"m.x","args":"-a 'b c' \"d\\\"e\" -- x","s":"\u00e9\u0000","i":-1,"d":1e308,"b":true,"o":{"args":"-z"}}"#;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let mut r = seed.to_vec();
            for _ in 0..(1 + round % 4) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % r.len();
                match x % 3 {
                    0 => r[at] = (x >> 8) as u8,
                    1 => {
                        r.remove(at);
                    }
                    _ => {
                        let pool = b"\"'\\{}[],:-\x00\xff";
                        r.insert(at, pool[(x >> 16) as usize % pool.len()]);
                    }
                }
                if r.is_empty() {
                    r.push(b'{');
                }
            }
            let s = CallState::new(&r, Arc::from("p"));
            let _ = (
                s.int64(b"i"),
                s.double(b"d"),
                s.boolean(b"b"),
                text(&s, "s"),
            );
            if let Ok(w) = words(&s) {
                assert!(!w.is_empty(), "argv[0] is always there");
            }
        }
    }

    #[test]
    fn types_and_absence() {
        let s = st(
            r#"{"method":"m.x","s":"a\"b\u00e9","i":-5,"big":9223372036854775808,"f":1.5,"e":1e3,"t":true,"n":null,"o":{"s":"nested"},"a":[1]}"#,
        );
        assert_eq!(text(&s, "s").unwrap(), "a\"bé".as_bytes());
        assert_eq!(s.int64(b"i"), Ok(-5));
        assert_eq!(s.int64(b"big"), Err(ffi::STATUS_WRONG_TYPE));
        assert_eq!(s.int64(b"f"), Err(ffi::STATUS_WRONG_TYPE));
        assert_eq!(s.int64(b"e"), Err(ffi::STATUS_WRONG_TYPE));
        assert_eq!(s.double(b"e"), Ok(1000.0));
        assert_eq!(s.double(b"i"), Ok(-5.0));
        assert_eq!(s.boolean(b"t"), Ok(true));
        assert_eq!(s.boolean(b"i"), Err(ffi::STATUS_WRONG_TYPE));
        assert_eq!(text(&s, "n"), Err(ffi::STATUS_NOT_FOUND));
        assert_eq!(text(&s, "absent"), Err(ffi::STATUS_NOT_FOUND));
        assert_eq!(text(&s, "o"), Err(ffi::STATUS_WRONG_TYPE));
        assert_eq!(text(&s, "a"), Err(ffi::STATUS_WRONG_TYPE));
        assert_eq!(text(&s, "i"), Err(ffi::STATUS_WRONG_TYPE));
        assert_eq!(s.int64(b"s"), Err(ffi::STATUS_WRONG_TYPE), "no conversions");
        assert_eq!(text(&s, "\u{ff}"), Err(ffi::STATUS_NOT_FOUND));
    }

    #[test]
    fn an_embedded_nul_is_kept_with_its_length() {
        let s = st(r#"{"s":"a\u0000b"}"#);
        assert_eq!(text(&s, "s").unwrap(), b"a\0b");
    }

    #[test]
    fn not_one_object_is_bad_request_for_every_reader() {
        for r in [
            "[1]",
            "7",
            "",
            "{",
            r#"{"a":1} {}"#,
            r#"{"a":1,"a":2}"#,
            "not json",
        ] {
            let s = st(r);
            assert_eq!(s.int64(b"a"), Err(ffi::STATUS_BAD_REQUEST), "{r}");
            assert_eq!(words(&s), Err(ffi::STATUS_BAD_REQUEST), "{r}");
        }
    }

    #[test]
    fn argv_follows_the_split_rule_with_the_method_first() {
        let s = st(r#"{"method":"getinfo.x","args":"-rr -n '3 4' -- \"a\\\"b\" -x"}"#);
        assert_eq!(
            words(&s).unwrap(),
            ["getinfo.x", "-rr", "-n", "3 4", "--", "a\"b", "-x"]
        );
        // The same array each time.
        assert_eq!(s.argv().unwrap().1, s.argv().unwrap().1);
        assert_eq!(words(&st("{}")).unwrap(), ["getinfo_x"]);
        assert_eq!(
            words(&st(r#"{"args":null,"method":7}"#)).unwrap(),
            ["getinfo_x"]
        );
        assert_eq!(words(&st(r#"{"args":"  "}"#)).unwrap(), ["getinfo_x"]);
        assert_eq!(words(&st(r#"{"args":5}"#)), Err(ffi::STATUS_WRONG_TYPE));
        assert_eq!(words(&st(r#"{"args":"-a 'x"}"#)), Err(ffi::STATUS_BAD_ARGS));
        assert_eq!(
            words(&st(r#"{"args":"a\u0000b"}"#)),
            Err(ffi::STATUS_BAD_ARGS)
        );
        let (argc, argv) = s.argv().unwrap();
        // SAFETY: the array has argc + 1 entries.
        assert!(unsafe { *argv.add(argc as usize) }.is_null());
    }
}
