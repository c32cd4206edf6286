//! cargo-fuzz target: [`wsbalancer_fuzz::frame_tracker`] on libFuzzer's inputs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsbalancer_fuzz::frame_tracker(data));
