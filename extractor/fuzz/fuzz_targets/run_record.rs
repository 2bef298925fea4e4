//! `run.json` as `compare` and `llorch-checkpoint-diff` read it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llorch_checkpoint_spec::record::RunRecord;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = RunRecord::parse(bytes) {
        for c in &record.checkpoints {
            let _ = record.checkpoint(&c.file);
            let _ = record.checkpoint_by_tensor(&c.tensor);
        }
        let _ = record.to_json();
        if let Some(steady) = &record.steady {
            let _ = steady.ratio();
        }
    }
});
