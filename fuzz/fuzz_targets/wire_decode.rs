//! Fuzzes the wire decoder, `Session::decode` of multipart frames.
//! The check is `parallax_wire::fuzzing::wire_decode`, which the committed corpus also runs through in `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parallax_wire::fuzzing::wire_decode(data));
