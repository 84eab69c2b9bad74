//! Fuzzes the connection-file reader and the controller's files.
//! The check is `parallax_wire::fuzzing::connection_file`, which the committed corpus also runs through in `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parallax_wire::fuzzing::connection_file(data));
