//! cargo-fuzz target: [`wsbalancer_fuzz::status_body`] on libFuzzer's inputs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsbalancer_fuzz::status_body(data));
