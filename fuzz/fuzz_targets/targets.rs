//! Fuzzes the `%px --targets` grammar, `Targets::parse` and `Targets::resolve`.
//! The check is `parallax_magics::fuzzing::targets`, which the committed corpus also runs through in `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parallax_magics::fuzzing::targets(data));
