"""ggml's ops in f64, each with the error its kernel is allowed, for `replay.py`.

Every op takes the node (`Node`: its ggml `ne`, type, `op_params`, layout)
and its operands (`Operand`: values as a float64 array of ggml's `ne`
reversed, always 4-D, with type, `ne` and layout), and returns a `Replayed`:
the op's exact value in f64, per element the largest difference from it
that the explanation allows, and the explanation in words.

The allowances are bounds, not fits: the worst case of the roundings the
kernel is documented to make (f32 arithmetic, an f16 or bf16 operand, 8-bit
activations in a quantized dot product, GELU through an f16 table, V
accumulated in f16), so that a kernel doing what the op says never exceeds
them, whatever the input. A kernel that computes something else does.
"""

import math

import numpy as np

#: Unit roundoff (half an ulp, relative) of each type a result is rounded to.
UNIT = {"f32": 2.0**-24, "f16": 2.0**-11, "bf16": 2.0**-8}
#: The smallest normal magnitude of each type: below it, an absolute floor.
TINY = {"f32": 2.0**-126, "f16": 2.0**-14, "bf16": 2.0**-126}


class Unknown(Exception):
    """An op (or a variant of one) the reference does not define."""


class Unavailable(Exception):
    """An operand the op needs whose values the run could not keep."""


class Replayed:
    def __init__(self, value, allow, explanation, rows=None):
        self.value = value
        self.allow = allow
        self.explanation = explanation
        #: SET_ROWS: the written rows (a boolean mask over the node), the
        #: only ones the op computes.
        self.rows = rows


def param_f32(node, i):
    """Op parameter `i` as the float ggml stored in it."""
    bits = node.op_params[i] if i < len(node.op_params) else 0
    return float(np.array([bits], dtype=np.int32).view(np.float32)[0])


def param_i32(node, i):
    return int(node.op_params[i]) if i < len(node.op_params) else 0


def rounding(value, dtype, ops=1.0):
    """The error of `ops` roundings to `dtype` of results of this size."""
    return ops * UNIT.get(dtype, 2.0**-24) * np.abs(value) + TINY.get(dtype, 0.0)


def round_to(x, dtype):
    """`x` rounded to `dtype` (what a conversion to the node's type does)."""
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "f32":
        return x.astype(np.float32).astype(np.float64)
    return x


def tile_to(b, shape):
    """ggml's broadcast of an operand (its ne divides the result's): repeated whole."""
    reps = [s // d for s, d in zip(shape, b.shape)]
    if any(s % d for s, d in zip(shape, b.shape)):
        raise Unknown(f"operand of shape {b.shape} does not repeat into {shape}")
    return np.tile(b, reps)


# --- elementwise -----------------------------------------------------------


def binary(fn, word):
    def op(node, srcs):
        a, b = srcs[0].value, tile_to(srcs[1].value, srcs[0].value.shape)
        value = fn(a, b)
        return Replayed(value, rounding(value, node.dtype), f"one f32 rounding of each {word}")

    return op


def sum_rows(node, srcs):
    x = srcs[0].value
    value = x.sum(axis=-1, keepdims=True)
    roundings = x.shape[-1] + 2 if node.device else 4
    allow = roundings * UNIT["f32"] * np.abs(x).sum(axis=-1, keepdims=True) + TINY["f32"]
    why = f"on {node.device}: {x.shape[-1]} terms summed in f32" if node.device else "summed in double, rounded to f32"
    return Replayed(value, allow, why)


def clamp(node, srcs):
    value = np.clip(srcs[0].value, param_f32(node, 0), param_f32(node, 1))
    return Replayed(value, np.zeros_like(value), "exact")


def argsort(node, srcs):
    """Any order that sorts each row is the op's: llama.cpp's own where it
    does (ties may fall either way), else a stable sort (and it differs)."""
    x, own = srcs[0].value, node.own().astype(np.int64)
    descending = param_i32(node, 0) == 1
    keys = -x if descending else x
    rows_ok = np.all(np.sort(own, axis=-1) == np.arange(x.shape[-1]), axis=-1)
    ordered = np.take_along_axis(keys, np.clip(own, 0, x.shape[-1] - 1), axis=-1)
    rows_ok &= np.all(np.diff(ordered, axis=-1) >= 0, axis=-1)
    fallback = np.argsort(keys, axis=-1, kind="stable")
    value = np.where(rows_ok[..., None], own, fallback).astype(np.float64)
    return Replayed(value, np.zeros_like(value), "exact: an order sorting each row")


def scale(node, srcs):
    s, bias = param_f32(node, 0), param_f32(node, 1)
    x = srcs[0].value
    value = x * s + bias
    allow = 2 * UNIT["f32"] * (np.abs(x * s) + abs(bias)) + TINY["f32"]
    return Replayed(value, allow, "f32 multiply and add")


def copy(node, srcs):
    """CPY, DUP, CONT: the operand's elements in order, converted to the node's type."""
    x = srcs[0].value.reshape(node.shape)
    value = x
    exact = node.dtype == srcs[0].dtype or node.dtype == "f32" and srcs[0].dtype in ("f16", "bf16")
    if exact:
        return Replayed(value, np.zeros_like(value), "a copy: exact")
    return Replayed(value, rounding(value, node.dtype), f"rounded to {node.dtype}")


# --- normalisation -----------------------------------------------------------


def sums(node, n):
    """How many f32 roundings a row's sums may carry: the CPU sums in
    double (a few), a device in f32 (up to one per term)."""
    if node.device:
        return n + 8, f"on {node.device}: sums of {n} in f32"
    return 8, "f32 scaling (sums in double)"


def rms_norm(node, srcs):
    eps = param_f32(node, 0)
    x = srcs[0].value
    value = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    roundings, why = sums(node, x.shape[-1])
    return Replayed(value, rounding(value, "f32", roundings), why)


def norm(node, srcs):
    eps = param_f32(node, 0)
    x = srcs[0].value
    mean = np.mean(x, axis=-1, keepdims=True)
    sigma = np.sqrt(np.mean((x - mean) ** 2, axis=-1, keepdims=True) + eps)
    value = (x - mean) / sigma
    roundings, why = sums(node, x.shape[-1])
    allow = roundings * UNIT["f32"] * (np.abs(x) + np.abs(mean)) / sigma + TINY["f32"]
    return Replayed(value, allow, why)


# --- activations -------------------------------------------------------------

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def gelu_tanh_slope(x):
    t = np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def silu(x):
    return x / (1 + np.exp(-x))


#: Each activation: its value, and the error its CPU kernel may add. ggml
#: computes tanh-GELU through an f16 table indexed by the input rounded to
#: f16 (`GGML_GELU_FP16`) for |x| < 10: an f16 rounding of the input (times
#: the slope) and one of the result.
def _gelu_allow(x, value):
    table = np.abs(x) < 10
    f16_error = UNIT["f16"] * (np.abs(x * gelu_tanh_slope(x)) + np.abs(value)) + TINY["f16"]
    return np.where(table, f16_error, rounding(value, "f32", 2))


ACTIVATIONS = {
    "GELU": (gelu_tanh, _gelu_allow, "tanh-GELU through ggml's f16 table (input and result rounded to f16)"),
    "GELU_ERF": (lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))), None, "f32 erf"),
    "SILU": (silu, None, "f32 exp and division"),
    "RELU": (lambda x: np.maximum(x, 0), None, "exact"),
    "TANH": (np.tanh, None, "f32 tanh"),
    "SIGMOID": (lambda x: 1 / (1 + np.exp(-x)), None, "f32 exp and division"),
    "GELU_QUICK": (lambda x: x / (1 + np.exp(-1.702 * x)), None, "f32 exp and division"),
    "NEG": (lambda x: -x, None, "exact"),
    "ABS": (np.abs, None, "exact"),
    "EXP": (np.exp, None, "f32 exp"),
}

UNARY_OPS = [
    "ABS", "SGN", "NEG", "STEP", "TANH", "ELU", "RELU", "SIGMOID", "GELU", "GELU_QUICK",
    "SILU", "HARDSWISH", "HARDSIGMOID", "EXP", "EXPM1", "SOFTPLUS", "GELU_ERF", "XIELU",
    "FLOOR", "CEIL", "ROUND", "TRUNC",
]  # fmt: skip


#: Activations computed through exp.
THROUGH_EXP = ("SILU", "SIGMOID", "GELU_QUICK", "EXP")


def activation(name, x, device=None):
    if name not in ACTIVATIONS:
        raise Unknown(f"unary op {name}")
    fn, allow, why = ACTIVATIONS[name]
    value = fn(x)
    allowed = allow(x, value) if allow else rounding(value, "f32", 0 if why == "exact" else 6)
    if device and name in THROUGH_EXP:
        # Vulkan's exp is held to 3 + 2|x| ulp (SPIR-V's precision rules), not
        # to the CPU's correctly rounded expf.
        allowed = allowed + 2 * UNIT["f32"] * (3 + 2 * np.abs(x)) * np.abs(value)
        why = f"on {device}: exp within 3 + 2|x| ulp, as SPIR-V allows"
    elif device and name == "GELU":
        why = f"on {device}: tanh-GELU, held to what the CPU's f16 table may err"
    return value, allowed, why


def unary(node, srcs):
    index = param_i32(node, 0)
    name = UNARY_OPS[index] if index < len(UNARY_OPS) else f"#{index}"
    value, allow, why = activation(name, srcs[0].value, node.device)
    return Replayed(value, allow, f"{name}: {why}")


GLU_OPS = ["REGLU", "GEGLU", "SWIGLU", "SWIGLU_OAI", "GEGLU_ERF", "GEGLU_QUICK", "SWIGLU_CLAMP"]
GLU_ACTIVATION = {"REGLU": "RELU", "GEGLU": "GELU", "SWIGLU": "SILU", "GEGLU_ERF": "GELU_ERF", "GEGLU_QUICK": "GELU_QUICK"}


def glu(node, srcs):
    index, swapped = param_i32(node, 0), param_i32(node, 1)
    name = GLU_OPS[index] if index < len(GLU_OPS) else f"#{index}"
    if name not in GLU_ACTIVATION:
        raise Unknown(f"GLU variant {name}")
    if len(srcs) > 1:
        a, b = srcs[0].value, srcs[1].value
    else:
        half = srcs[0].value.shape[-1] // 2
        a, b = srcs[0].value[..., :half], srcs[0].value[..., half:]
    if swapped:
        a, b = b, a
    act, act_allow, why = activation(GLU_ACTIVATION[name], a, node.device)
    value = act * b
    allow = act_allow * np.abs(b) + rounding(value, "f32", 1)
    return Replayed(value, allow, f"{name}: {why}, times the gate in f32")


# --- rows and layouts --------------------------------------------------------


def get_rows(node, srcs):
    """out[i12, i11, i10] = src0[i12, i11, rows[i12, i11, i10]] (weights dequantized exactly)."""
    table, rows = srcs[0].value, srcs[1].value.astype(np.int64)
    n3, n2, _, n0 = node.shape
    value = np.empty(node.shape)
    for i3 in range(n3):
        for i2 in range(n2):
            idx = rows[0, i3 % rows.shape[1], i2 % rows.shape[2], :]
            if idx.min(initial=0) < 0 or idx.max(initial=0) >= table.shape[2]:
                raise Unknown(f"row index out of range (0..{table.shape[2]}): {idx.min()}..{idx.max()}")
            value[i3, i2] = table[i3 % table.shape[0], i2 % table.shape[1], idx, :]
    return Replayed(value, rounding(value, "f32", 1), f"rows of {srcs[0].dtype}, as f32")


def set_rows(node, srcs):
    """dst[rows[i]] = src0[i], converted to the node's type; other rows untouched."""
    x, rows = srcs[0].value, srcs[1].value.astype(np.int64)
    if x.shape[0] != 1 or x.shape[1] != 1:
        raise Unknown("SET_ROWS of more than 2 dimensions")
    idx = rows.reshape(-1)
    written = np.zeros(node.shape, dtype=bool)
    value = np.zeros(node.shape)
    if idx.min(initial=0) < 0 or idx.max(initial=0) >= node.shape[2]:
        raise Unknown(f"row index out of range (0..{node.shape[2]})")
    value[0, 0, idx, :] = round_to(x[0, 0], node.dtype)
    written[0, 0, idx, :] = True
    exact = node.dtype == srcs[0].dtype
    why = "a copy: exact" if exact else f"rows rounded to {node.dtype} (ggml rounds to nearest, as the reference)"
    return Replayed(value, np.zeros(node.shape), why, rows=written)


def reshape(node, srcs):
    return Replayed(srcs[0].value.reshape(node.shape), np.zeros(node.shape), "a view: no arithmetic")


def permute(node, srcs):
    axes = [param_i32(node, i) for i in range(4)]
    perm = [0] * 4
    for i, axis in enumerate(axes):
        perm[3 - axis] = 3 - i
    value = np.transpose(srcs[0].value, perm)
    return Replayed(value, np.zeros(node.shape), "a view: no arithmetic")


def transpose(node, srcs):
    value = np.swapaxes(srcs[0].value, 2, 3)
    return Replayed(value, np.zeros(node.shape), "a view: no arithmetic")


def addresses(ne, nb, offset, size):
    """The element index (in units of `size` bytes) of every element of a strided tensor."""
    idx = [np.arange(n) * (b // size if b % size == 0 else b / size) for n, b in zip(ne, nb)]
    i0, i1, i2, i3 = idx
    flat = offset // size + i3[:, None, None, None] + i2[None, :, None, None] + i1[None, None, :, None]
    return (flat + i0[None, None, None, :]).astype(np.int64)


ELEMENT_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "i32": 4, "i64": 8}


def view(node, srcs):
    """A view reads its root's bytes at an offset with its own strides: the
    operand's values placed where the operand's layout puts them, read back
    where the node's does."""
    src = srcs[0]
    size = ELEMENT_BYTES.get(node.dtype)
    if size is None or any(b % size for b in node.layout["nb"] + src.layout["nb"]):
        raise Unknown(f"VIEW of a {node.dtype} tensor")
    src_root = src.layout.get("view_of") or src.name
    if node.layout.get("view_of") != src_root:
        raise Unknown(f"VIEW of {node.layout.get('view_of')} through {src.name}")
    src_at = addresses(src.ne, src.layout["nb"], src.layout.get("offset", 0), size)
    node_at = addresses(node.ne, node.layout["nb"], node.layout.get("offset", 0), size)
    memory = np.full(max(src_at.max(), node_at.max()) + 1, np.nan)
    memory[src_at] = src.value
    value = memory[node_at]
    if np.isnan(value).any() and not np.isnan(src.value).any():
        raise Unknown("the view reads bytes its operand does not hold")
    return Replayed(value, np.zeros(node.shape), "a view: no arithmetic")
