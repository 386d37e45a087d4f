//! Fuzz target: see [`tower_response_cache_fuzz::key_normaliser`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tower_response_cache_fuzz::key_normaliser(data);
});
