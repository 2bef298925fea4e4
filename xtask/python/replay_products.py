"""ggml's products and attention in f64, with their kernels' allowances, for
`replay.py`: MUL_MAT, ROPE, SOFT_MAX, FLASH_ATTN_EXT (conventions as in
`replay_ops.py`)."""

import math

import numpy as np

from replay_ops import TINY, UNIT, Replayed, Unknown, param_f32, param_i32, rounding

#: What ggml's CPU quantizes the activations to before a dot product with
#: weights of each type (`vec_dot_type` in ggml-cpu.c's type traits).
VEC_DOT_TYPE = {
    "q4_0": "q8_0", "q5_0": "q8_0", "q8_0": "q8_0", "iq4_nl": "q8_0", "mxfp4": "q8_0",
    "q4_1": "q8_1", "q5_1": "q8_1",
}  # fmt: skip
Q8_BLOCK = {"q8_0": 32, "q8_1": 32, "q8_K": 256}


def vec_dot_type(weight_type):
    if weight_type in ("f32", "f16", "bf16"):
        return weight_type
    if weight_type in VEC_DOT_TYPE:
        return VEC_DOT_TYPE[weight_type]
    if weight_type.endswith("_K") or weight_type.startswith("iq"):
        return "q8_K"
    raise Unknown(f"MUL_MAT with {weight_type} weights")


def broadcast_weights(a, b):
    """ggml's MUL_MAT broadcast: each matrix of `a` serves consecutive matrices of `b`."""
    r3, r2 = b.shape[0] // a.shape[0], b.shape[1] // a.shape[1]
    return np.repeat(np.repeat(a, r3, axis=0), r2, axis=1)


def activation_quantization(a, b, kind):
    """The most 8-bit activations (blocks of 32 or 256 along K, scale
    amax/127, an f16 scale for q8_0/q8_1) can move each dot product."""
    block = Q8_BLOCK[kind]
    k = b.shape[-1]
    if k % block:
        raise Unknown(f"K={k} is not a multiple of {kind}'s block {block}")
    blocks = b.reshape(*b.shape[:-1], k // block, block)
    scale = np.abs(blocks).max(axis=-1, keepdims=True) / 127
    step = scale * (0.5 if kind == "q8_K" else 0.5 + 127 * UNIT["f16"])
    per_element = np.broadcast_to(step, blocks.shape).reshape(b.shape)
    allow = per_element @ np.abs(a).swapaxes(-1, -2)
    if kind == "q8_1":
        # The block sums that weights with a minimum (q4_1, q5_1) are dotted
        # with are stored in f16 too.
        sums = np.abs(blocks.sum(axis=-1))
        amax = np.abs(a.reshape(*a.shape[:-1], k // block, block)).max(axis=-1)
        allow = allow + UNIT["f16"] * (sums @ amax.swapaxes(-1, -2))
    return allow


def mul_mat(node, srcs):
    w, x = srcs[0], srcs[1]
    a, b = broadcast_weights(w.value, x.value), x.value
    value = b @ a.swapaxes(-1, -2)
    magnitude = np.abs(b) @ np.abs(a).swapaxes(-1, -2)
    k = b.shape[-1]
    kind = vec_dot_type(w.dtype)
    allow = k * UNIT["f32"] * magnitude + TINY["f32"]
    if kind in UNIT and kind != "f32":
        allow += UNIT[kind] * magnitude
        why = f"{w.dtype} x f32: the f32 operand rounded to {kind}, sums in f32"
    elif kind in Q8_BLOCK:
        allow += activation_quantization(a, b, kind)
        why = f"{w.dtype} weights: activations quantized to {kind} (8 bits per block), sums in f32"
    else:
        why = "f32 x f32: sums in f32"
    if node.device:
        # A device's shaders may read both operands as f16 and round the result to f16.
        allow += 2 * UNIT["f16"] * magnitude + rounding(value, "f16")
        why = f"on {node.device}: operands read as f16, the result rounded to f16 ({why} on the CPU)"
    return Replayed(value, allow, why)


def mul_mat_id(node, srcs):
    """out[t, slot] = expert ids[t, slot]'s matrix times b[t, slot % b's rows]."""
    experts, b, ids = srcs[0], srcs[1].value, srcs[2].value.astype(np.int64)
    tokens, slots = ids.shape[2], ids.shape[3]
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= experts.value.shape[1]:
        raise Unknown(f"expert id out of range (0..{experts.value.shape[1]})")
    value, allow, why = np.empty(node.shape), np.empty(node.shape), ""
    for t in range(tokens):
        for slot in range(slots):
            a = experts.value[:, ids[0, 0, t, slot]][None]
            x = b[:, t, slot % b.shape[2]][:, None, None, :]
            one = mul_mat(node, [Expert(experts, a), Expert(srcs[1], x)])
            value[0, t, slot] = one.value.reshape(-1)
            allow[0, t, slot] = one.allow.reshape(-1)
            why = one.explanation
    return Replayed(value, allow, f"per chosen expert, {why}")


class Expert:
    """One expert's matrix (or one row of the input) with its operand's type."""

    def __init__(self, operand, value):
        self.dtype = operand.dtype
        self.value = value


# --- rope --------------------------------------------------------------------


def yarn_corr_dims(n_dims, n_ctx_orig, base, beta_fast, beta_slow):
    def corr_dim(n_rot):
        return n_dims * math.log(n_ctx_orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    return max(0, math.floor(corr_dim(beta_fast))), min(n_dims - 1, math.ceil(corr_dim(beta_slow)))


def rope_angles(node, positions, factors):
    """Per token and rotated pair, the angle and the magnitude factor (YaRN's `mscale`)."""
    n_dims, n_ctx_orig = param_i32(node, 1), param_i32(node, 4)
    base, freq_scale, ext = param_f32(node, 5), param_f32(node, 6), param_f32(node, 7)
    attn_factor, beta_fast, beta_slow = param_f32(node, 8), param_f32(node, 9), param_f32(node, 10)
    j = np.arange(n_dims // 2)
    extrap = positions[:, None] * base ** (-2.0 * j / n_dims)[None, :]
    if factors is not None:
        extrap = extrap / factors[None, : n_dims // 2]
    theta = freq_scale * extrap
    mscale = attn_factor
    if ext != 0:
        low, high = yarn_corr_dims(n_dims, n_ctx_orig, base, beta_fast, beta_slow)
        ramp = 1 - np.clip((j - low) / max(0.001, high - low), 0, 1)
        mix = ramp * ext
        theta = theta * (1 - mix) + extrap * mix
        mscale *= 1 + 0.1 * math.log(1 / freq_scale)
    return theta, mscale


def rope(node, srcs):
    mode, n_dims, offset = param_i32(node, 2), param_i32(node, 1), param_i32(node, 15)
    if mode not in (0, 2):
        raise Unknown(f"ROPE mode {mode} (multi-section or vision)")
    x = srcs[0].value
    positions = srcs[1].value.reshape(-1)[: x.shape[1]]
    factors = srcs[2].value.reshape(-1) if len(srcs) > 2 else None
    theta, mscale = rope_angles(node, positions, factors)
    half = n_dims // 2
    pairs = np.arange(half)
    if mode == 0:
        first, second = offset + 2 * pairs, offset + 2 * pairs + 1
    else:
        first, second = offset + pairs, offset + pairs + half
    cos = (np.cos(theta) * mscale)[None, :, None, :]
    sin = (np.sin(theta) * mscale)[None, :, None, :]
    x0, x1 = x[..., first], x[..., second]
    value = x.copy()
    value[..., first] = x0 * cos - x1 * sin
    value[..., second] = x0 * sin + x1 * cos
    # ggml builds the angles by repeated f32 products (theta *= theta_scale,
    # theta_scale from powf): pair j's angle carries about (3j + 3) roundings.
    drift = UNIT["f32"] * (np.abs(theta) * (3 * pairs + 3) + 4)[None, :, None, :]
    pair_allow = 2 * abs(mscale) * (np.abs(x0) + np.abs(x1)) * drift + TINY["f32"]
    allow = rounding(value, "f32", 0)
    allow[..., first] = pair_allow
    allow[..., second] = pair_allow
    return Replayed(value, allow, "f32 angles built by repeated products, f32 sin and cos")


# --- attention ---------------------------------------------------------------


def alibi_slopes(n_head, max_bias):
    if max_bias <= 0:
        return np.ones(n_head)
    n_log2 = 2 ** math.floor(math.log2(n_head))
    m0, m1 = 2 ** (-max_bias / n_log2), 2 ** (-(max_bias / 2) / n_log2)
    h = np.arange(n_head)
    return np.where(h < n_log2, m0 ** (h + 1), m1 ** (2 * (h - n_log2) + 1))


def masked_logits(s, mask, max_bias):
    """`s` [.., heads, rows, n_kv] plus the mask (its rows, broadcast over heads) times ALiBi's slope."""
    if mask is None:
        return s
    m = mask[..., : s.shape[-2], :]
    m = np.broadcast_to(m if m.shape[1] in (1, s.shape[1]) else m[:, :1], s.shape)
    slopes = alibi_slopes(s.shape[1], max_bias)[None, :, None, None]
    with np.errstate(invalid="ignore"):
        return s + np.where(np.isneginf(m), -np.inf, slopes * m)


def softmax(logits, sinks=None):
    top = np.max(logits, axis=-1, keepdims=True)
    if sinks is not None:
        top = np.maximum(top, sinks)
    e = np.exp(logits - top)
    total = e.sum(axis=-1, keepdims=True)
    if sinks is not None:
        total = total + np.exp(sinks - top)
    return e / total


def logit_size(logits):
    finite = np.where(np.isfinite(logits), np.abs(logits), 0)
    return finite.max(axis=-1, keepdims=True)


def soft_max(node, srcs):
    scale, max_bias = param_f32(node, 0), param_f32(node, 1)
    x = srcs[0].value
    mask = srcs[1].value if len(srcs) > 1 else None
    sinks = srcs[2].value.reshape(1, -1, 1, 1) if len(srcs) > 2 else None
    logits = masked_logits(x * scale, mask, max_bias)
    value = softmax(logits, sinks)
    allow = value * UNIT["f32"] * (16 + 4 * logit_size(logits)) + TINY["f32"]
    return Replayed(value, allow, "f32 exp and sums (the sum in double)")


#: From this many queries on, the pinned CPU backend computes flash
#: attention in tiles with Q, K and V in f32 (GGML_FA_TILE_Q); older trees,
#: and fewer queries, take the one-query path the allowance is made for.
TILED_QUERIES = 64


def heads_for(kv, n_head):
    """Grouped-query attention: each K/V head serves n_head / kv_heads consecutive heads."""
    return np.repeat(kv, n_head // kv.shape[1], axis=1)


def flash_attn_ext(node, srcs):
    scale, max_bias, softcap = param_f32(node, 0), param_f32(node, 1), param_f32(node, 2)
    q, k, v = srcs[0].value, srcs[1].value, srcs[2].value
    mask = srcs[3].value if len(srcs) > 3 else None
    sinks = srcs[4].value.reshape(1, -1, 1, 1) if len(srcs) > 4 else None
    k, v = heads_for(k, q.shape[1]), heads_for(v, q.shape[1])
    s = scale * (q @ k.swapaxes(-1, -2))
    if softcap != 0:
        s = softcap * np.tanh(s / softcap)
    logits = masked_logits(s, mask, max_bias)
    p = softmax(logits, sinks)
    out = p @ v
    value = out.transpose(0, 2, 1, 3)
    allow = attention_allowance(node, srcs, q, k, v, p, scale)
    kinds = f"K {srcs[1].dtype}, V {srcs[2].dtype}"
    why = f"{kinds}: Q rounded to K's type, V accumulated in {srcs[2].dtype}, f32 softmax"
    if q.shape[2] >= TILED_QUERIES:
        why += " (allowed; with this many queries the pinned CPU's tiled path keeps all three in f32)"
    return Replayed(value, allow.transpose(0, 2, 1, 3), why)


def attention_allowance(node, srcs, q, k, v, p, scale):
    """What Q rounded to K's type, f32 dot products and a V accumulator of
    V's type (one rounding per cell it adds) may move each output."""
    d = q.shape[-1]
    unit_q = UNIT.get(srcs[1].dtype, UNIT["f32"]) if srcs[1].dtype != "f32" else 0.0
    logit_error = abs(scale) * (unit_q + d * UNIT["f32"]) * (np.abs(q) @ np.abs(k).swapaxes(-1, -2))
    worst_logit = np.where(p > 0, logit_error, 0).max(axis=-1, keepdims=True)
    spread = p @ np.abs(v)
    cells = (p > 0).sum(axis=-1, keepdims=True)
    unit_v = UNIT.get(srcs[2].dtype, UNIT["f32"])
    return (2 * worst_logit + unit_v * (cells + 2) + 8 * UNIT["f32"]) * spread + TINY["f32"]
