//! A checkpoint or candidate file: `.bin`, `.npy` as f32, `.npy` as f64.
//! Every input is either refused with an error or read whole; none panics or
//! allocates for data the bytes do not hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llorch_checkpoint_spec::format::{self, Format};

fuzz_target!(|bytes: &[u8]| {
    for fmt in [Format::Bin, Format::Npy] {
        if let Ok(t) = format::parse(bytes, fmt) {
            let n: i64 = t.shape.iter().product();
            assert_eq!(n as usize, t.data.len(), "shape and data disagree");
        }
    }
    if let Ok((shape, data)) = format::parse_npy_f64(bytes) {
        let n: i64 = shape.iter().product();
        assert_eq!(n as usize, data.len(), "shape and data disagree");
    }
});
