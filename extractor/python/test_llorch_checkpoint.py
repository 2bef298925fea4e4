"""Tests of llorch_checkpoint.py: `python -m unittest` in this directory.

With ``LLORCH_TEST_RUN`` naming a real extractor run (verify passes one), its
every checkpoint is read and checked against run.json's sha256, shape and
statistics; without it those tests are skipped, and say so.
"""

import hashlib
import json
import os
import struct
import tempfile
import unittest

import numpy as np

import llorch_checkpoint as lc

REAL_RUN = os.environ.get("LLORCH_TEST_RUN")


def fake_run(path, arrays):
    """A run directory of `{(id, layer): array}`, as the extractor lays one out."""
    os.makedirs(path)
    checkpoints = []
    for (id, layer), a in arrays.items():
        file = f"{id}" + ("" if layer is None else f"_l{layer}") + ".bin"
        lc.write_tensor(os.path.join(path, file), a)
        with open(os.path.join(path, file), "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        checkpoints.append(
            {"id": id, "layer": layer, "step": 0, "tensor": f"{id}-{layer}", "op": "ADD",
             "shape": list(a.shape), "file": file, "sha256": sha}
        )
    record = {"schema_version": lc.SCHEMA_VERSION, "tokens": [15496, 995], "checkpoints": checkpoints}
    with open(os.path.join(path, "run.json"), "w") as f:
        json.dump(record, f)
    return lc.Run(path)


class Files(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_a_bin_file_is_the_documented_bytes(self):
        a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
        path = os.path.join(self.dir, "x.bin")
        lc.write_tensor(path, a)
        with open(path, "rb") as f:
            raw = f.read()
        self.assertEqual(raw[:20], struct.pack("<iqq", 2, 2, 3))
        self.assertEqual(np.frombuffer(raw[20:], "<f4").tolist(), [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
        np.testing.assert_array_equal(lc.read_tensor(path), a)
        npy = os.path.join(self.dir, "x.npy")
        lc.write_tensor(npy, a)
        np.testing.assert_array_equal(lc.read_tensor(npy), a)

    def test_a_damaged_file_is_refused_by_what_is_wrong(self):
        path = os.path.join(self.dir, "x.bin")
        for raw, why in [
            (b"\x01", "too short"),
            (struct.pack("<i", 99), "99 dimensions"),
            (struct.pack("<iq", 1, -4), "negative dimension"),
            (struct.pack("<iq", 1, 4) + b"\0" * 12, "needs 16 bytes"),
        ]:
            with open(path, "wb") as f:
                f.write(raw)
            with self.assertRaisesRegex(ValueError, why):
                lc.read_tensor(path)


class Runs(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(7)
        self.ln1 = rng.standard_normal((2, 8)).astype(np.float32)
        self.ffn = {l: rng.standard_normal((2, 8)).astype(np.float32) for l in (0, 1)}
        arrays = {("ln1_output", 0): self.ln1}
        arrays.update({("ffn_output", l): a for l, a in self.ffn.items()})
        self.run = fake_run(os.path.join(self.tmp.name, "run"), arrays)

    def tearDown(self):
        self.tmp.cleanup()

    def test_checkpoints_are_found_by_id_layer_and_node_name(self):
        np.testing.assert_array_equal(self.run.array("ln1_output"), self.ln1)
        np.testing.assert_array_equal(self.run.array("ffn_output", layer=1), self.ffn[1])
        np.testing.assert_array_equal(self.run.array("ffn_output-0"), self.ffn[0])
        self.assertEqual(sorted(self.run.by_layer(0)), ["ffn_output", "ln1_output"])
        with self.assertRaisesRegex(KeyError, r"several layers \[0, 1\]"):
            self.run.array("ffn_output")
        with self.assertRaisesRegex(KeyError, "no checkpoint 'nope'"):
            self.run.array("nope")

    def test_another_schema_is_refused_by_name(self):
        path = os.path.join(self.run.path, "run.json")
        record = json.load(open(path))
        record["schema_version"] = 3
        json.dump(record, open(path, "w"))
        with self.assertRaisesRegex(ValueError, "schema version 3"):
            lc.Run(self.run.path)

    def test_a_candidate_is_written_whole_or_not_at_all(self):
        out = os.path.join(self.tmp.name, "candidate")
        scaled = {c: self.run.array(c) * 1.01 for c in self.run.checkpoints()}
        lc.write_candidate(out, self.run, scaled)
        self.assertEqual(
            sorted(os.listdir(out)), ["ffn_output_l0.bin", "ffn_output_l1.bin", "ln1_output_l0.bin", "tokens.json"]
        )
        np.testing.assert_array_equal(lc.read_tensor(os.path.join(out, "ffn_output_l1.bin")), self.ffn[1] * 1.01)
        self.assertEqual(json.load(open(os.path.join(out, "tokens.json"))), [15496, 995])
        # A wrong shape: an error naming the checkpoint, and nothing on the disk.
        bad = os.path.join(self.tmp.name, "bad")
        with self.assertRaisesRegex(ValueError, "ln1_output: the array's shape \\[8, 2\\]"):
            lc.write_candidate(bad, self.run, {"ln1_output": self.ln1.T})
        self.assertEqual(sorted(os.listdir(self.tmp.name)), ["candidate", "run"])
        with self.assertRaisesRegex(FileExistsError, "not an empty directory"):
            lc.write_candidate(out, self.run, scaled)


@unittest.skipUnless(REAL_RUN, "SKIPPED: set LLORCH_TEST_RUN to an extractor run to read a real one")
class RealRun(unittest.TestCase):
    def test_every_checkpoint_reads_as_run_json_records_it(self):
        run = lc.Run(REAL_RUN)
        checkpoints = run.checkpoints(step=None)
        self.assertGreater(len(checkpoints), 0)
        for c in checkpoints:
            with open(os.path.join(run.path, c.file), "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), c.sha256, c.file)
            a = run.array(c)
            self.assertEqual(a.shape, c.shape, c.id)
            finite = a[np.isfinite(a)]
            self.assertEqual(int(a.size - finite.size), c.record["non_finite"], c.id)
            if finite.size:
                # run.json spells an f32 by its shortest decimal: compare as f32.
                self.assertEqual(finite.min(), np.float32(c.record["min"]), c.id)
                self.assertEqual(finite.max(), np.float32(c.record["max"]), c.id)
                mean = float(finite.astype(np.float64).mean())
                self.assertTrue(np.isclose(mean, c.record["mean"], rtol=1e-6, atol=1e-9), (c.id, mean))


if __name__ == "__main__":
    unittest.main()
