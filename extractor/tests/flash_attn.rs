//! Flash attention as the user asks: the graph it gives, and what a manifest
//! says of the checkpoints it changes (scores absent, V cached untransposed).

mod common;

use common::{extractor, manifests, model, read, run_ok};
use llorch_checkpoint_extractor::check::check_complete;
use llorch_checkpoint_extractor::record::{FlashAttnMode, RunRecord};

#[test]
fn with_flash_attention_the_scores_are_absent_with_the_reason_and_v_is_untransposed() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let run = |fa: &str| {
        let dir = tmp.path().join(fa);
        run_ok(&[
            "-m",
            model.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "-p",
            "Hello world",
            "--flash-attn",
            fa,
            "--out",
            dir.to_str().unwrap(),
        ]);
        (RunRecord::read(&dir).unwrap(), dir)
    };
    let (on, on_dir) = run("on");
    let (off, off_dir) = run("off");
    assert_eq!(
        (on.flash_attn.requested, on.flash_attn.used),
        (FlashAttnMode::On, Some(true))
    );
    assert_eq!(
        (off.flash_attn.requested, off.flash_attn.used),
        (FlashAttnMode::Off, Some(false))
    );
    assert_eq!((on.checkpoints.len(), off.checkpoints.len()), (8, 9));
    assert_eq!(on.absent.len(), 1);
    assert_eq!(on.absent[0].id, "04_scores");
    assert!(
        on.absent[0].reason.contains("no kq_soft_max node"),
        "{:?}",
        on.absent
    );
    assert!(off.absent.is_empty());
    // V: [head_dim, n_head, n_kv] with flash attention (as K), transposed without.
    assert_eq!(
        read(&on_dir, "checkpoint_03_cache_v.bin").shape,
        [1, 2, 12, 64]
    );
    assert_eq!(
        read(&off_dir, "checkpoint_03_cache_v.bin").shape,
        [1, 64, 12, 2]
    );
    // The same values, only laid out differently.
    let (a, b) = (
        read(&on_dir, "checkpoint_03_cache_v.bin"),
        read(&off_dir, "checkpoint_03_cache_v.bin"),
    );
    for (cell, head, dim) in [(0, 0, 0), (1, 5, 63), (0, 11, 17)] {
        assert_eq!(
            a.data[(cell * 12 + head) * 64 + dim],
            b.data[(dim * 12 + head) * 2 + cell]
        );
    }
    // Readers take the run's own layout from run.json.
    for dir in [&on_dir, &off_dir] {
        let verdicts = check_complete(dir).unwrap();
        assert!(verdicts.iter().all(|v| v.verdict.is_ok()), "{dir:?}");
        let expected = RunRecord::read(dir)
            .unwrap()
            .manifest(&manifest)
            .unwrap()
            .checkpoints
            .len();
        assert_eq!(expected, RunRecord::read(dir).unwrap().checkpoints.len());
    }
}

#[test]
fn list_nodes_shows_the_graph_an_extraction_with_the_same_options_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model();
    for fa in ["on", "off", "auto"] {
        let common = [
            "-m",
            model.to_str().unwrap(),
            "-p",
            "Hello world",
            "--flash-attn",
            fa,
        ];
        let listed = extractor(&[&common[..], &["--list-nodes"]].concat());
        assert!(listed.status.success());
        let listed = String::from_utf8(listed.stdout).unwrap();
        let dir = tmp.path().join(fa);
        run_ok(
            &[
                &common[..],
                &["--tensors", "*", "--out", dir.to_str().unwrap()],
            ]
            .concat(),
        );
        let record = RunRecord::read(&dir).unwrap();
        // Every captured node, in order, is a listed node with the same op.
        let mut lines = listed.lines();
        for cp in &record.checkpoints {
            let found = lines.any(|l| {
                l.strip_prefix(cp.tensor.as_str()).is_some_and(|rest| {
                    rest.starts_with(' ') && rest.split_whitespace().next() == Some(cp.op.as_str())
                })
            });
            assert!(
                found,
                "--flash-attn {fa}: {} ({}) is not in --list-nodes in order",
                cp.tensor, cp.op
            );
        }
        let fused = listed.contains(" FLASH_ATTN_EXT ");
        assert_eq!(
            fused,
            record.flash_attn.used == Some(true),
            "--flash-attn {fa}"
        );
        assert_eq!(fused, fa != "off", "on a CPU, auto turns it on");
        let has_scores = record
            .checkpoints
            .iter()
            .any(|c| c.tensor == "kq_soft_max-0");
        assert_eq!(has_scores, !fused && listed.contains("kq_soft_max-0 "));
    }
}
