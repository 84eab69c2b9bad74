//! Fuzzes the magics parser, `parse_cell`.
//! The check is `parallax_magics::fuzzing::magics`, which the committed corpus also runs through in `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parallax_magics::fuzzing::magics(data));
