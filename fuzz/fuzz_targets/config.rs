#![no_main]
//! Fuzzes `muster_node::fuzzing::config` (see that function for what the bytes mean).
libfuzzer_sys::fuzz_target!(|data: &[u8]| muster_node::fuzzing::config(data));
