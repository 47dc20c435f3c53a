//! One retcode table: proto's [`Retcode`] (the table), the abi's Rust
//! mirror (`basicagent_abi::retcode`) and the `#define BA_RETCODE_*` lines
//! of the C header agree on names, values and messages.

use basicagent_abi::retcode as abi;
use basicagent_proto::Retcode;

const HEADER: &str = include_str!("../../abi/include/basicagent_plugin.h");

/// The header's `#define BA_RETCODE_NAME 1234u` lines, in order.
fn header_codes() -> Vec<(String, u32)> {
    HEADER
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some("#define") {
                return None;
            }
            let name = words.next()?.strip_prefix("BA_RETCODE_")?;
            let value = words.next().expect("a value after the name");
            let digits = value.strip_suffix('u').unwrap_or(value);
            let value: u32 = digits
                .parse()
                .unwrap_or_else(|e| panic!("BA_RETCODE_{name} {value:?}: {e}"));
            assert_eq!(words.next(), None, "BA_RETCODE_{name}: trailing text");
            Some((name.to_owned(), value))
        })
        .collect()
}

/// The abi's constant for each name proto knows.
fn abi_value(name: &str) -> Option<u32> {
    Some(match name {
        "SUCCESS" => abi::SUCCESS,
        "INVALID_REQUEST" => abi::INVALID_REQUEST,
        "INVALID_PARAMS" => abi::INVALID_PARAMS,
        "UNKNOWN_METHOD" => abi::UNKNOWN_METHOD,
        "TIMEOUT" => abi::TIMEOUT,
        "UNKNOWN_USER" => abi::UNKNOWN_USER,
        "PLUGIN_FAILURE" => abi::PLUGIN_FAILURE,
        "BUSY" => abi::BUSY,
        "PERMISSION_DENIED" => abi::PERMISSION_DENIED,
        "CANCELLED" => abi::CANCELLED,
        _ => return None,
    })
}

#[test]
fn the_header_defines_exactly_proto_s_table_in_order() {
    let header = header_codes();
    let table: Vec<(String, u32)> = Retcode::ALL
        .iter()
        .map(|c| {
            (
                c.name().expect("every code in ALL has a name").to_owned(),
                c.0,
            )
        })
        .collect();
    assert_eq!(header, table);
}

#[test]
fn the_abi_mirror_has_the_same_values_and_messages() {
    for code in Retcode::ALL {
        let name = code.name().expect("named");
        assert_eq!(
            abi_value(name),
            Some(code.0),
            "basicagent_abi::retcode::{name}"
        );
        assert_eq!(
            abi::message(code.0),
            code.message(),
            "message of {}",
            code.0
        );
    }
    // Unknown codes: the same fallback on both sides.
    for unknown in [0, 1, 3, 3019, 3029, u32::MAX] {
        assert_eq!(abi::message(unknown), Retcode(unknown).message());
        assert_eq!(Retcode(unknown).name(), None);
    }
}

#[test]
fn names_and_values_are_unique() {
    let mut names: Vec<_> = Retcode::ALL.iter().filter_map(|c| c.name()).collect();
    let mut values: Vec<_> = Retcode::ALL.iter().map(|c| c.0).collect();
    names.sort_unstable();
    names.dedup();
    values.sort_unstable();
    values.dedup();
    assert_eq!(names.len(), Retcode::ALL.len());
    assert_eq!(values.len(), Retcode::ALL.len());
}
