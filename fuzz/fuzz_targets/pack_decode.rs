//! Fuzzes the pack decoder, `pack::is_pack` and `pack::unpack`.
//! The check is `parallax_wire::fuzzing::pack_decode`, which the committed corpus also runs through in `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parallax_wire::fuzzing::pack_decode(data));
