"""Tests of the f64 ops of replay_ops.py and replay_products.py: `python -m
unittest` in this directory. Each op against values computed by hand, and
each allowance against ggml's documented roundings emulated on random
inputs (the f16 GELU table, 8-bit activations, f16 Q and V in flash
attention): a kernel that rounds as documented stays within it. (The ops
against ggml itself: `cargo xtask verify --only replay` replays real graphs.)
"""

import math
import unittest

import numpy as np

import replay_ops as ops
import replay_products as products


def f32_bits(x):
    return int(np.array([x], dtype=np.float32).view(np.int32)[0])


class Node:
    def __init__(self, ne, params=(), dtype="f32", layout=None):
        self.ne = list(ne) + [1] * (4 - len(ne))
        self.shape = tuple(reversed(self.ne))
        self.op_params = list(params)
        self.dtype = dtype
        self.device = None
        self.layout = layout or {"nb": [4, 4 * self.ne[0], 4 * self.ne[0] * self.ne[1], 4 * self.ne[0] * self.ne[1] * self.ne[2]]}


class Src:
    def __init__(self, values, dtype="f32", layout=None, name="x"):
        values = np.asarray(values, dtype=np.float64)
        self.value = values.reshape((1,) * (4 - values.ndim) + values.shape)
        self.ne = list(reversed(self.value.shape))
        self.dtype = dtype
        self.name = name
        self.layout = layout


class HandComputed(unittest.TestCase):
    def test_rms_norm_and_norm(self):
        r = ops.rms_norm(Node([2], [f32_bits(0.0)]), [Src([3.0, 4.0])])
        np.testing.assert_allclose(r.value.reshape(-1), [3 / math.sqrt(12.5), 4 / math.sqrt(12.5)], rtol=1e-15)
        n = ops.norm(Node([3], [f32_bits(0.0)]), [Src([1.0, 2.0, 3.0])])
        np.testing.assert_allclose(n.value.reshape(-1), [-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rtol=1e-15)

    def test_mul_mat_is_rows_of_the_first_dotted_with_the_second(self):
        # ggml: a ne [K=2, M=2], b ne [K=2, N=1] -> [M=2, N=1]
        r = products.mul_mat(Node([2, 1]), [Src([[1.0, 2.0], [3.0, 4.0]]), Src([[1.0, 1.0]])])
        np.testing.assert_array_equal(r.value.reshape(-1), [3.0, 7.0])

    def test_add_broadcasts_by_repeating(self):
        r = ops.binary(np.add, "sum")(Node([2, 2]), [Src([[1.0, 2.0], [3.0, 4.0]]), Src([10.0, 20.0])])
        np.testing.assert_array_equal(r.value.reshape(-1), [11, 22, 13, 24])

    def test_rope_rotates_pairs_by_position_times_frequency(self):
        params = [0, 2, 0, 0, 0, f32_bits(10000.0), f32_bits(1.0), 0, f32_bits(1.0), 0, 0]
        r = products.rope(Node([2, 1, 1], params), [Src([[[1.0, 0.0]]]), Src([1.0])])
        np.testing.assert_allclose(r.value.reshape(-1), [math.cos(1), math.sin(1)], rtol=1e-15)
        neox = [0, 4, 2, 0, 0, f32_bits(100.0), f32_bits(1.0), 0, f32_bits(1.0), 0, 0]
        r = products.rope(Node([4, 1, 1], neox), [Src([[[1.0, 1.0, 0.0, 0.0]]]), Src([2.0])])
        angles = [2.0, 2.0 / 10.0]  # p * 100^(-2j/4)
        expected = [math.cos(angles[0]), math.cos(angles[1]), math.sin(angles[0]), math.sin(angles[1])]
        np.testing.assert_allclose(r.value.reshape(-1), expected, rtol=1e-15)

    def test_soft_max_scales_and_masks(self):
        x = Src([[0.0, math.log(3) / 2, 5.0]])
        mask = Src([[0.0, 0.0, -np.inf]])
        r = products.soft_max(Node([3, 1], [f32_bits(2.0)]), [x, mask])
        np.testing.assert_allclose(r.value.reshape(-1), [0.25, 0.75, 0.0], rtol=1e-15)

    def test_flash_attention_weights_values_by_softmax_of_scaled_scores(self):
        q = Src(np.array([1.0, 0.0]).reshape(1, 1, 1, 2))  # [D=2, n_q=1, H=1]
        k = Src(np.array([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2), dtype="f16")
        v = Src(np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2), dtype="f16")
        mask = Src(np.zeros((1, 1, 1, 2)), dtype="f16")
        r = products.flash_attn_ext(Node([2, 1, 1], [f32_bits(math.log(3))]), [q, k, v, mask])
        s = float(np.float32(math.log(3)))  # the scale as ggml stores it
        p = np.array([math.exp(s), 1.0]) / (math.exp(s) + 1)
        np.testing.assert_allclose(r.value.reshape(-1), p @ np.array([[1.0, 2.0], [3.0, 4.0]]), rtol=1e-15)

    def test_glu_and_views(self):
        r = ops.glu(Node([1]), [Src([1.0]), Src([2.0])])  # GLU op 0 (REGLU) by default
        self.assertEqual(r.value.reshape(-1)[0], 2.0)
        swiglu = ops.glu(Node([1], [2]), [Src([1.0]), Src([2.0])])
        self.assertAlmostEqual(swiglu.value.reshape(-1)[0], 2.0 / (1 + math.exp(-1)), places=15)
        x = np.arange(6.0).reshape(2, 3)  # ne [3, 2]
        p = ops.permute(Node([2, 3], [1, 0, 2, 3]), [Src(x)])
        np.testing.assert_array_equal(p.value[0, 0], x.T)
        # A view of elements 1..2 of each row (offset 4 bytes, row stride 12).
        root = {"nb": [4, 12, 24, 24]}
        v = ops.view(Node([2, 2], layout={"nb": [4, 12, 24, 24], "view_of": "x", "offset": 4}), [Src(x, layout=root)])
        np.testing.assert_array_equal(v.value[0, 0], [[1, 2], [4, 5]])

    def test_rows_are_read_and_written_by_index(self):
        table = np.arange(8.0).reshape(4, 2)  # 4 rows of 2
        r = ops.get_rows(Node([2, 2]), [Src(table), Src([3.0, 1.0], dtype="i32")])
        np.testing.assert_array_equal(r.value[0, 0], [[6, 7], [2, 3]])
        s = ops.set_rows(Node([2, 4], dtype="f16"), [Src([[1 / 3, 1.0]]), Src([2.0], dtype="i64")])
        self.assertTrue(s.rows[0, 0, 2].all() and not s.rows[0, 0, 0].any())
        self.assertEqual(s.value[0, 0, 2, 0], float(np.float16(1 / 3)))

    def test_an_op_it_does_not_define_is_named(self):
        with self.assertRaisesRegex(ops.Unknown, "ROPE mode 8"):
            products.rope(Node([2, 1, 1], [0, 2, 8]), [Src([[[1.0, 0.0]]]), Src([1.0])])


def gelu_through_f16_table(x):
    """ggml's CPU GELU: the table holds f16(gelu(f16 input)) for |x| < 10."""
    x16 = x.astype(np.float16).astype(np.float32)
    table = ops.gelu_tanh(x16.astype(np.float64)).astype(np.float16)
    return np.where(np.abs(x) < 10, table.astype(np.float64), ops.gelu_tanh(x.astype(np.float64)))


def quantize_q8_0(x):
    """ggml's reference quantize_row_q8_0: d = amax/127 stored in f16, q = round(x/d)."""
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    d = (amax / 127).astype(np.float32)
    q = np.round(blocks / np.where(d == 0, 1, d))
    return (q * d.astype(np.float16).astype(np.float64)).reshape(x.shape)


class AllowancesHoldWhatTheyExplain(unittest.TestCase):
    rng = np.random.default_rng(7)

    def test_gelu_table_errors_are_within_the_allowance(self):
        x = self.rng.normal(0, 3, 4096).astype(np.float32).astype(np.float64)
        r = ops.unary(Node([4096], [8]), [Src(x)])
        self.assertTrue((np.abs(gelu_through_f16_table(x) - r.value.reshape(-1)) <= r.allow.reshape(-1)).all())

    def test_q8_0_activations_are_within_the_allowance(self):
        a = self.rng.normal(0, 1, (16, 256))
        b = self.rng.normal(0, 1, (4, 256)) * self.rng.choice([1, 30], (4, 256))
        r = products.mul_mat(Node([16, 4]), [Src(a, dtype="q8_0"), Src(b)])
        quantized = quantize_q8_0(b) @ a.T
        exceeded = np.abs(quantized - r.value[0, 0]) / r.allow[0, 0]
        self.assertLessEqual(exceeded.max(), 1.0)
        self.assertGreater(exceeded.max(), 0.01, "the allowance is not loose beyond use")

    def test_f16_q_and_v_in_flash_attention_are_within_the_allowance(self):
        d, n = 64, 40
        q = self.rng.normal(0, 1, (1, 2, 3, d))
        k = self.rng.normal(0, 1, (1, 2, n, d)).astype(np.float16).astype(np.float64)
        v = self.rng.normal(0, 1, (1, 2, n, d)).astype(np.float16).astype(np.float64)
        node = Node([d, 2, 3], [f32_bits(1 / 8)])
        r = products.flash_attn_ext(node, [Src(q), Src(k, "f16"), Src(v, "f16")])
        q16 = q.astype(np.float16).astype(np.float64)
        p = products.softmax(q16 @ k.swapaxes(-1, -2) / 8)
        acc = np.zeros((1, 2, 3, d), dtype=np.float16)  # V summed in f16, as ggml's one-query path
        for j in range(n):
            acc = (acc + (p[..., j : j + 1] * v[:, :, j : j + 1, :])).astype(np.float16)
        emulated = acc.astype(np.float64).transpose(0, 2, 1, 3)
        self.assertTrue((np.abs(emulated - r.value) <= r.allow).all())

    def test_a_wrong_kernel_exceeds_its_allowance(self):
        x = self.rng.normal(0, 1, (1, 1, 8, 64))
        params = [0, 64, 2, 0, 0, f32_bits(10000.0), f32_bits(1.0), 0, f32_bits(1.0), 0, 0]
        positions = Src(np.arange(8.0))
        right = products.rope(Node([64, 1, 8], params), [Src(x.transpose(0, 2, 1, 3)), positions])
        wrong_base = list(params)
        wrong_base[5] = f32_bits(10500.0)
        wrong = products.rope(Node([64, 1, 8], wrong_base), [Src(x.transpose(0, 2, 1, 3)), positions])
        self.assertGreater((np.abs(wrong.value - right.value) / right.allow).max(), 100)


if __name__ == "__main__":
    unittest.main()
