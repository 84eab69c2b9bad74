//! Fuzzes the `db_query` translation of a `query_request` into SQL.
//! The check is `parallax_controller::fuzzing::db_query`, which the committed corpus also runs through in `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parallax_controller::fuzzing::db_query(data));
