//! cargo-fuzz target: [`wsbalancer_fuzz::response_head`] on libFuzzer's inputs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsbalancer_fuzz::response_head(data));
