"""The PyTorch reference for `cargo xtask compare`.

Reads a job (JSON, written by xtask/src/compare.rs): the GGUF the extractor
ran, the token ids of its run record, the reference variants to compute and,
per checkpoint, which tensor of Hugging Face's GPT2Model it corresponds to and
the layout ops (symbols already resolved to integers by xtask) that turn that
tensor into the checkpoint file's row-major shape. Writes one .npy per
checkpoint and variant into <out>/<variant>/, and <out>/reference.json.

Captures:
  h.<l>.<module path>      output of that module (forward hook), e.g. h.0.ln_1,
                           h.0.attn.c_attn, h.0.attn.c_proj, h.0.mlp
  present.<l>.key|value    the layer's KV cache after the pass, [1, n_head, n_kv, head_dim]
  attentions.<l>           attention probabilities, [1, n_head, n_tokens, n_kv]
Ops: drop_batch (remove a leading 1), slice {axis, start, len}, reshape [dims],
permute [axes].

Variants: "f32", "f64", and f64 with llama.cpp's own approximations emulated
("f64+gelu_table": GELU through ggml's f16 lookup table; "+f16_attn": Q, K, V
and the attention probabilities rounded to f16 where ggml's attention with the
default f16 KV cache multiplies in f16).

A missing package is reported in one paragraph with its fix, exit code 3.
"""

import json
import struct
import sys
import time


def fail(msg, code=3):
    sys.stderr.write("gpt2_reference: " + msg.strip() + "\n")
    sys.exit(code)


try:
    import numpy as np
    import torch
    import transformers
    from transformers import GPT2Config, GPT2Model
except ImportError as e:  # one paragraph, no traceback: xtask wraps it with the fix
    fail(
        f"cannot import {e.name or e}: the PyTorch reference needs torch, transformers and numpy "
        f"in the project's Python environment (target/llorch/pyenv). `cargo xtask compare` "
        f"creates it with pip from PyPI; if PyPI is unreachable or the install was interrupted, "
        f"delete target/llorch/pyenv/llorch-requirements.txt and rerun `cargo xtask compare` "
        f"where PyPI can be reached. ({sys.executable})"
    )


# --- GGUF (the subset GPT-2 needs: metadata, F32/F16/Q8_0 tensors) -------------

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf(path):
    data = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(data)
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        s = bytes(buf[pos:pos + n]).decode("utf-8", "replace")
        pos += n
        return s

    def value(t):
        if t in GGUF_SCALARS:
            return take(GGUF_SCALARS[t])
        if t == 8:
            return string()
        if t == 9:
            inner, n = take("<I"), take("<Q")
            return [value(inner) for _ in range(n)]
        raise ValueError(f"{path}: unknown GGUF value type {t}")

    if bytes(buf[0:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    pos = 4
    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is too old")
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        n_dims = take("<I")
        ne = [take("<Q") for _ in range(n_dims)]
        infos.append((name, ne, take("<I"), take("<Q")))
    align = meta.get("general.alignment", 32)
    start = (pos + align - 1) // align * align
    tensors = {}
    for name, ne, ggml_type, offset in infos:
        n = int(np.prod(ne))
        at = start + offset
        shape = tuple(reversed(ne))  # row-major: ggml ne reversed
        if ggml_type == 0:
            arr = np.frombuffer(data, dtype="<f4", count=n, offset=at)
        elif ggml_type == 1:
            arr = np.frombuffer(data, dtype="<f2", count=n, offset=at).astype(np.float32)
        elif ggml_type == 8:  # Q8_0: blocks of 32 = f16 scale + 32 int8
            blocks = np.frombuffer(data, dtype=np.dtype([("d", "<f2"), ("q", "i1", 32)]), count=n // 32, offset=at)
            arr = (blocks["q"].astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)
        else:
            raise ValueError(f"{path}: tensor {name} has ggml type {ggml_type}; the reference reads F32, F16 and Q8_0")
        tensors[name] = arr.reshape(shape)
    return meta, tensors


def build_model(meta, tensors):
    arch = meta.get("general.architecture")
    if arch != "gpt2":
        raise ValueError(f"the GGUF is a {arch!r} model; the reference is GPT-2 only")
    n_embd = meta["gpt2.embedding_length"]
    config = GPT2Config(
        vocab_size=tensors["token_embd.weight"].shape[0],
        n_positions=meta["gpt2.context_length"],
        n_embd=n_embd,
        n_layer=meta["gpt2.block_count"],
        n_head=meta["gpt2.attention.head_count"],
        n_inner=meta["gpt2.feed_forward_length"],
        layer_norm_epsilon=meta["gpt2.attention.layer_norm_epsilon"],
        activation_function="gelu_new",  # the tanh GELU, as ggml_gelu
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        attn_implementation="eager",  # so attention probabilities exist
    )
    t = lambda name: torch.from_numpy(np.array(tensors[name], dtype=np.float32))
    # GGUF (like torch.nn.Linear) keeps 2-D weights as [out, in] row-major;
    # GPT-2's Conv1D keeps [in, out]: transpose. The fused QKV stays fused (c_attn).
    state = {"wte.weight": t("token_embd.weight"), "wpe.weight": t("position_embd.weight"),
             "ln_f.weight": t("output_norm.weight"), "ln_f.bias": t("output_norm.bias")}
    for l in range(config.n_layer):
        b, h = f"blk.{l}.", f"h.{l}."
        for ours, theirs, transpose in [
            ("ln_1", "attn_norm", False), ("attn.c_attn", "attn_qkv", True), ("attn.c_proj", "attn_output", True),
            ("ln_2", "ffn_norm", False), ("mlp.c_fc", "ffn_up", True), ("mlp.c_proj", "ffn_down", True),
        ]:
            w = t(b + theirs + ".weight")
            state[h + ours + ".weight"] = w.T.contiguous() if transpose else w
            state[h + ours + ".bias"] = t(b + theirs + ".bias")
    model = GPT2Model(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")]
    if missing or unexpected:
        raise ValueError(f"weights do not fit GPT2Model: missing {missing}, unexpected {unexpected}")
    return model.eval(), config


class GeluTable(torch.nn.Module):
    """ggml's CPU GELU: f16(gelu(f16(x))) through a 65536-entry table, x outside (-10, 10) passed or zeroed."""

    def forward(self, x):
        x16 = x.to(torch.float16).to(x.dtype)
        y = 0.5 * x16 * (1.0 + torch.tanh(0.7978845608028654 * x16 * (1.0 + 0.044715 * x16 * x16)))
        y = y.to(torch.float16).to(x.dtype)
        return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))


class ProbsF16(torch.nn.Module):
    """In place of the (inactive) attention dropout: keeps the probabilities, passes them on rounded to f16."""

    def __init__(self, captured, layer):
        super().__init__()
        self.captured, self.layer = captured, layer

    def forward(self, p):
        self.captured[f"attentions.{self.layer}"] = p.detach().clone()
        return p.to(torch.float16).to(p.dtype)


def run_variant(model, config, variant, tokens, checkpoints):
    dtype = torch.float64 if variant.startswith("f64") else torch.float32
    flags = set(variant.split("+")[1:])
    unknown = flags - {"gelu_table", "f16_attn"}
    if unknown:
        raise ValueError(f"unknown variant flags {sorted(unknown)} in {variant!r}")
    m = model.to(dtype)
    for block in m.h:
        block.mlp.act = GeluTable() if "gelu_table" in flags else transformers.activations.NewGELUActivation()
    hooks, captured = [], {}
    n_embd = config.n_embd
    wanted = {cp["capture"] for cp in checkpoints}
    for name in wanted:
        if name.startswith("h."):
            module = m.get_submodule(name)  # raises for a module GPT2Model does not have

            def hook(_mod, _inp, out, name=name):
                captured[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()

            hooks.append(module.register_forward_hook(hook))
    for l, block in enumerate(m.h):
        block.attn.attn_dropout = ProbsF16(captured, l) if "f16_attn" in flags else torch.nn.Identity()
    if "f16_attn" in flags:
        # With an f16 KV cache ggml multiplies in f16: K and V are stored as f16,
        # and Q (for KQ) and the probabilities (for KQV) are converted to f16.
        def round_qkv(_mod, _inp, out):
            return out.to(torch.float16).to(out.dtype)

        for block in m.h:
            hooks.append(block.attn.c_attn.register_forward_hook(round_qkv))
    try:
        with torch.no_grad():
            out = m(input_ids=torch.tensor([tokens]), use_cache=True, output_attentions=True, return_dict=True)
    finally:
        for h in hooks:
            h.remove()
    cache = out.past_key_values
    legacy = cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else cache
    for l, (k, v) in enumerate(legacy):
        captured[f"present.{l}.key"] = k
        captured[f"present.{l}.value"] = v
    for l, a in enumerate(out.attentions):
        captured.setdefault(f"attentions.{l}", a)  # ProbsF16 keeps the unrounded ones
    return captured


def apply_ops(x, ops, where):
    for op in ops:
        kind = op["op"]
        if kind == "drop_batch":
            if x.shape[0] != 1:
                raise ValueError(f"{where}: drop_batch on shape {list(x.shape)}")
            x = x[0]
        elif kind == "slice":
            axis = op["axis"] % x.ndim
            if op["start"] + op["len"] > x.shape[axis]:
                raise ValueError(f"{where}: slice {op} outside shape {list(x.shape)}")
            x = x.narrow(axis, op["start"], op["len"])
        elif kind == "reshape":
            x = x.reshape(op["shape"])
        elif kind == "permute":
            x = x.permute(op["axes"])
        else:
            raise ValueError(f"{where}: unknown op {kind!r}")
    return x


def save_npy(path, arr):
    np.save(path, np.ascontiguousarray(arr))


def main():
    if len(sys.argv) != 2:
        fail("usage: gpt2_reference.py JOB.json", 2)
    job = json.load(open(sys.argv[1]))
    started = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(job.get("threads", 2))
    meta, tensors = read_gguf(job["gguf"])
    model, config = build_model(meta, tensors)
    del tensors
    out_dir = job["out"]
    import os
    for variant in job["variants"]:
        captured = run_variant(model, config, variant, job["tokens"], job["checkpoints"])
        vdir = os.path.join(out_dir, variant)
        os.makedirs(vdir, exist_ok=True)
        for cp in job["checkpoints"]:
            where = f"checkpoint {cp['key']} ({cp['capture']})"
            if cp["capture"] not in captured:
                raise ValueError(f"{where}: no such capture; known: h.<l>.<module>, present.<l>.key|value, attentions.<l>")
            x = apply_ops(captured[cp["capture"]], cp["ops"], where)
            if list(x.shape) != cp["shape"]:
                raise ValueError(f"{where}: the ops give shape {list(x.shape)}, the checkpoint file has {cp['shape']}")
            save_npy(os.path.join(vdir, cp["stem"] + ".npy"), x.numpy())
    info = {
        "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
        "attn_implementation": model.config._attn_implementation, "variants": job["variants"],
        "checkpoints": len(job["checkpoints"]), "seconds": time.time() - started,
    }
    json.dump(info, open(os.path.join(out_dir, "reference.json"), "w"), indent=2)
    print(f"reference: {len(job['checkpoints'])} checkpoints x {len(job['variants'])} variants in {info['seconds']:.1f} s "
          f"(torch {torch.__version__}, transformers {transformers.__version__}, eager attention)")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, OSError) as e:
        fail(f"{type(e).__name__}: {e}", 4)
