"""The PyTorch reference for `cargo xtask compare`, for every architecture.

Reads a job (JSON, written by xtask/src/compare/reference.rs): the GGUF the
extractor ran, the token ids of its run record, the reference variants to
compute and, per checkpoint, which tensor of the Hugging Face model it
corresponds to and the layout ops (symbols already resolved to integers by
xtask) that turn that tensor into the checkpoint file's row-major shape.
Writes one .npy per checkpoint and variant into <out>/<variant>/, and
<out>/reference.json.

The model is transformers' own for the GGUF's architecture, loaded from the
same GGUF (`from_pretrained(dir, gguf_file=name)`: transformers and the `gguf`
package read and dequantize it), with eager attention. Nothing here knows an
architecture.

Captures:
  <module path>            output of that module (forward hook), e.g.
                           model.layers.0.input_layernorm, transformer.h.0.mlp
  <module path>:input      its first input (e.g. a residual sum no module returns)
  attn.<l>.query|key|value what the layer's attention multiplies: Q and K after
                           rotary embeddings, V; [1, heads, n_tokens, head_dim],
                           K and V before grouped-query heads are repeated
  present.<l>.key|value    the layer's KV cache after the pass, [1, kv_heads, n_kv, head_dim]
  attentions.<l>           attention probabilities, [1, n_head, n_tokens, n_kv]
Ops: drop_batch (remove a leading 1), slice {axis, start, len}, reshape [dims],
permute [axes].

Variants: "f32", "f64", and f64 with llama.cpp's own approximations emulated:
"+gelu_table" (tanh-GELU through ggml's f16 lookup table, where the model has
one) and "+f16_attn" (Q, K, V and the probabilities rounded to f16, as ggml's
attention multiplies with the default f16 KV cache).

A missing package is reported in one paragraph with its fix, exit code 3.
"""

import json
import os
import shutil
import sys
import time


def fail(msg, code=3):
    sys.stderr.write("reference: " + msg.strip() + "\n")
    sys.exit(code)


try:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    import gguf  # noqa: F401  (transformers reads GGUF through it)
except ImportError as e:  # one paragraph, no traceback: xtask wraps it with the fix
    fail(
        f"cannot import {e.name or e}: the PyTorch reference needs torch, transformers, gguf and numpy "
        f"in the project's Python environment (target/llorch/pyenv). `cargo xtask compare` "
        f"installs them with pip from PyPI; if PyPI is unreachable or the install was interrupted, "
        f"delete target/llorch/pyenv/llorch-requirements.txt and rerun `cargo xtask compare` "
        f"where PyPI can be reached. ({sys.executable})"
    )

# The tanh-approximated GELU classes transformers uses; ggml computes that one through a table.
TANH_GELUS = {"NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "GELUPytorchTanh"}


def load_model(path, sha256):
    """The GGUF's model in transformers, in float32, and whether it came from the saved copy.

    Parsing a GGUF (its vocabulary above all) takes 9 to 40 s; the model it gives is saved once as
    safetensors in $LLORCH_REFERENCE_MODELS/<sha256 of the GGUF>, and later jobs load that."""
    eager = dict(dtype=torch.float32, attn_implementation="eager")  # eager: attention probabilities exist
    root = os.environ.get("LLORCH_REFERENCE_MODELS")
    saved = os.path.join(root, sha256) if root and sha256 else None
    if saved and os.path.isfile(os.path.join(saved, "config.json")):
        return AutoModelForCausalLM.from_pretrained(saved, **eager).eval(), True
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), **eager
    ).eval()
    if saved:
        # Whole or not at all: written beside, then renamed into place.
        partial = f"{saved}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        try:
            os.rename(partial, saved)
        except OSError:  # another job saved it first
            shutil.rmtree(partial, ignore_errors=True)
    return model, False


class GeluTable(torch.nn.Module):
    """ggml's CPU GELU: f16(gelu(f16(x))) through a 65536-entry table, x outside (-10, 10) passed or zeroed."""

    def forward(self, x):
        x16 = x.to(torch.float16).to(x.dtype)
        y = 0.5 * x16 * (1.0 + torch.tanh(0.7978845608028654 * x16 * (1.0 + 0.044715 * x16 * x16)))
        y = y.to(torch.float16).to(x.dtype)
        return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))


def f16(x):
    return x.to(torch.float16).to(x.dtype)


class Attention:
    """Wraps the model's eager attention function: records what it multiplies
    and its probabilities, and with f16_attn rounds them as ggml does."""

    def __init__(self, model):
        self.namespace = sys.modules[type(model).__module__]
        if not hasattr(self.namespace, "eager_attention_forward"):
            raise ValueError(f"{type(model).__name__}: no eager_attention_forward to observe attention with")
        self.original = self.namespace.eager_attention_forward
        self.captured, self.round = {}, False

    def __enter__(self):
        original = self.original

        def observed(module, query, key, value, attention_mask, *args, **kwargs):
            l = module.layer_idx
            for name, t in (("query", query), ("key", key), ("value", value)):
                self.captured[f"attn.{l}.{name}"] = t.detach().clone()
            if self.round:
                query, key, value = f16(query), f16(key), f16(value)
            out, probs = original(module, query, key, value, attention_mask, *args, **kwargs)
            self.captured[f"attentions.{l}"] = probs.detach().clone()
            if self.round:
                # ggml multiplies the probabilities with the f16 V in f16 too.
                n_rep = probs.shape[1] // value.shape[1]
                v = value.repeat_interleave(n_rep, dim=1)
                out = torch.matmul(f16(probs), v).transpose(1, 2).contiguous()
            return out, probs

        self.namespace.eager_attention_forward = observed
        return self

    def __exit__(self, *exc):
        self.namespace.eager_attention_forward = self.original


def swap_gelus(model, table):
    """Replaces every tanh-GELU module with ggml's table (or back); returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            original = getattr(child, "_llorch_original", None)
            if table and type(child).__name__ in TANH_GELUS:
                replacement = GeluTable()
                replacement._llorch_original = child
                setattr(parent, name, replacement)
                swapped += 1
            elif not table and original is not None:
                setattr(parent, name, original)
    return swapped


def run_variant(model, variant, tokens, checkpoints):
    dtype = torch.float64 if variant.startswith("f64") else torch.float32
    flags = set(variant.split("+")[1:])
    unknown = flags - {"gelu_table", "f16_attn"}
    if unknown:
        raise ValueError(f"unknown variant flags {sorted(unknown)} in {variant!r}")
    m = model.to(dtype)
    swap_gelus(m, "gelu_table" in flags)
    hooks, captured = [], {}
    for name in {cp["capture"] for cp in checkpoints}:
        if name.split(".")[0] in ("attn", "present", "attentions"):
            continue
        path, _, side = name.partition(":")
        module = m.get_submodule(path)  # raises for a module the model does not have
        if side == "input":

            def pre_hook(_mod, args, name=name):
                captured[name] = args[0].detach().clone()

            hooks.append(module.register_forward_pre_hook(pre_hook))
            continue
        if side:
            raise ValueError(f"capture {name!r}: after ':' only `input` is known")

        def hook(_mod, _inp, out, name=name):
            captured[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), Attention(m) as attention:
            attention.round = "f16_attn" in flags
            out = m(input_ids=torch.tensor([tokens]), use_cache=True, return_dict=True)
    finally:
        for h in hooks:
            h.remove()
        swap_gelus(m, False)
    captured.update(attention.captured)
    cache = out.past_key_values
    legacy = cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else cache
    # With f16_attn the cache is what ggml stores: f16.
    stored = f16 if "f16_attn" in flags else (lambda t: t)
    for l, (k, v) in enumerate(legacy):
        captured[f"present.{l}.key"] = stored(k)
        captured[f"present.{l}.value"] = stored(v)
    return captured, out.logits[0, -1]


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


def main():
    if len(sys.argv) != 2:
        fail("usage: reference.py JOB.json", 2)
    job = json.load(open(sys.argv[1]))
    started = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(job.get("threads", 2))
    model, from_saved = load_model(job["gguf"], job.get("gguf_sha256"))
    loaded = time.time() - started
    out_dir = job["out"]
    next_tokens = {}
    for variant in job["variants"]:
        captured, logits = run_variant(model, variant, job["tokens"], job["checkpoints"])
        next_tokens[variant] = int(logits.argmax())
        vdir = os.path.join(out_dir, variant)
        os.makedirs(vdir, exist_ok=True)
        for cp in job["checkpoints"]:
            where = f"checkpoint {cp['key']} ({cp['capture']})"
            if cp["capture"] not in captured:
                raise ValueError(
                    f"{where}: no such capture; known: <module path>[:input], attn.<l>.query|key|value, "
                    f"present.<l>.key|value, attentions.<l>"
                )
            x = apply_ops(captured[cp["capture"]], cp["ops"], where)
            if list(x.shape) != cp["shape"]:
                raise ValueError(f"{where}: the ops give shape {list(x.shape)}, the checkpoint file has {cp['shape']}")
            np.save(os.path.join(vdir, cp["stem"] + ".npy"), np.ascontiguousarray(x.numpy()))
    info = {
        "model": type(model).__name__, "torch": torch.__version__, "transformers": transformers.__version__,
        "numpy": np.__version__, "attn_implementation": model.config._attn_implementation,
        "variants": job["variants"], "next_token": next_tokens, "checkpoints": len(job["checkpoints"]),
        "load_seconds": loaded, "loaded_from_saved": from_saved, "seconds": time.time() - started,
    }
    json.dump(info, open(os.path.join(out_dir, "reference.json"), "w"), indent=2)
    print(f"reference: {type(model).__name__}, {len(job['checkpoints'])} checkpoints x {len(job['variants'])} variants "
          f"in {info['seconds']:.1f} s (loading {loaded:.1f} s{' from the saved copy' if from_saved else ''}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, eager attention)")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, OSError, AttributeError) as e:
        fail(f"{type(e).__name__}: {e}", 4)
