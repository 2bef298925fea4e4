"""The PyTorch reference for `cargo xtask compare`, for every architecture.

Reads a job (JSON, written by the comparison library's reference.rs): the model
(`gguf`, the GGUF the extractor ran, or `hf`, the Hugging Face checkpoint it was
converted from), the token ids of its run record, the reference variants to
compute and, per checkpoint, which tensor of the Hugging Face model it
corresponds to and the layout ops (symbols already resolved to integers) that
turn that tensor into the checkpoint file's row-major shape. Writes one .npy
per checkpoint and variant into <out>/<variant>/, and <out>/reference.json.
With `everything`, no checkpoints are named: every floating-point tensor the
pass makes is written once (<order>.npy, and tensors.json with its name,
layer, order, shape and aliases, and `late` for those taken after the pass,
whose place in it is not known), for the matcher to pair with llama.cpp's nodes.

The model is transformers' own for the architecture, with eager attention:
from the checkpoint as it is, or from the GGUF (`from_pretrained(dir,
gguf_file=name)`: transformers and the `gguf` package read and dequantize it).
Nothing here knows an architecture.

Captures:
  <module path>            output of that module (forward hook), e.g.
                           model.layers.0.input_layernorm, transformer.h.0.mlp
  <module path>:input      its first input (e.g. a residual sum no module returns)
  attn.<l>.query|key|value what the layer's attention multiplies: Q and K after
                           rotary embeddings, V; [1, heads, n_tokens, head_dim],
                           K and V before grouped-query heads are repeated
  present.<l>.key|value    the layer's KV cache after the pass, [1, kv_heads, n_kv, head_dim]
  attentions.<l>           attention probabilities, [1, n_head, n_tokens, n_kv]
  logits                   the model's output, [1, n_tokens, n_vocab]
Ops: drop_batch (remove a leading 1), slice {axis, start, len}, reshape [dims],
permute [axes], scale {by} (multiply by a constant).

Streaming (`stream`): the model is built with its weights on the meta device and each decoder
layer (and each other module holding weights) is read from the safetensors (`hf`'s, or a GGUF's
saved copy, made first) just before it runs and freed after: peak memory about one layer in f64,
results bitwise the whole model's.

Variants: "f32", "f64", "f64+replay" (each decoder layer but the first fed llama.cpp's own input
of that layer, the job's `layer_inputs`: the error each layer adds, apart from what it inherits),
and f64 with llama.cpp's own approximations emulated:
"+gelu_table" (tanh-GELU through ggml's f16 lookup table, where the model has
one) and "+f16_attn" (Q, K, V and the probabilities rounded to f16, as ggml's
attention multiplies with the default f16 KV cache). An f64 variant the model
cannot run (transformers' grouped MoE matmuls refuse float64) is reported in
reference.json's `unavailable`, and the comparison takes f32 as its truth.

A missing package is reported in one paragraph with its fix, exit code 3.
"""

import hashlib
import json
import os
import resource
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from streamed import decoder_layers, replayed, streamed_model  # noqa: E402


class Unavailable(Exception):
    """A variant this model cannot have (f16_attn without eager_attention_forward)."""


# The tanh-approximated GELU classes transformers uses; ggml computes that one through a table.
TANH_GELUS = {"NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "GELUPytorchTanh"}


# The reference runs transformers 5; 4.x (the converter's) still loads models the 4.x way.
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def load_model(job):
    """The job's model in transformers, in float32, and whether it came from the saved copy.

    From a Hugging Face checkpoint (`hf`, the original of a converted GGUF) as it is; from a GGUF
    through transformers' own GGUF loader. Parsing a GGUF (its vocabulary above all) takes 9 to
    40 s; the model it gives is saved once as safetensors in $LLORCH_REFERENCE_MODELS/<sha256 of
    the GGUF>, and later jobs load that."""
    # eager attention: the probabilities exist. transformers 5 runs a mixture of experts' experts
    # through grouped matmuls, which refuse float64; its eager loop computes them one by one.
    eager = dict(dtype=torch.float32, attn_implementation="eager")
    if TRANSFORMERS_5:
        eager["experts_implementation"] = "eager"
    if job.get("stream"):
        return streamed_model(job.get("hf") or saved_copy(job), eager), False
    if job.get("hf"):
        return AutoModelForCausalLM.from_pretrained(job["hf"], **eager).eval(), False
    path, sha256 = job["gguf"], job.get("gguf_sha256")
    root = os.environ.get("LLORCH_REFERENCE_MODELS")
    saved = os.path.join(root, sha256) if root and sha256 else None
    if saved and os.path.isfile(os.path.join(saved, "config.json")):
        os.utime(saved)  # used now: the last to be dropped (make_room)
        return AutoModelForCausalLM.from_pretrained(saved, **eager).eval(), True
    try:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), **eager, **dense(path)
        ).eval()
    except (ValueError, RuntimeError, KeyError, NotImplementedError) as e:
        fail(
            f"transformers {transformers.__version__} cannot load {path} as a model ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else e}). Its GGUF loader knows only some architectures, and not "
            f"every GGUF of those; pass the original Hugging Face checkpoint with --hf DIR "
            f"(cargo xtask compare --hf DIR converts it with the pinned converter and compares with it)",
            4,
        )
    # transformers 5 remembers that the model came from a GGUF, and will not save it; dequantized
    # as it is, it is a plain model.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    if saved and make_room(root, model):
        # Whole or not at all: written beside, then renamed into place.
        partial = f"{saved}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            model.save_pretrained(partial)
            os.rename(partial, saved)
        except OSError:  # a full disk, or another job saved it first: a cache may stay cold
            shutil.rmtree(partial, ignore_errors=True)
    return model, False


def saved_copy(job):
    """For a streamed reference of a GGUF: the directory of its saved copy (safetensors, float32),
    made first if missing (loading the GGUF whole, in float32 alone, then freeing it)."""
    root, sha256 = os.environ.get("LLORCH_REFERENCE_MODELS"), job.get("gguf_sha256")
    saved = os.path.join(root, sha256) if root and sha256 else None
    if saved and not os.path.isfile(os.path.join(saved, "config.json")):
        model, _ = load_model({**job, "stream": False})
        del model
    if not saved or not os.path.isfile(os.path.join(saved, "config.json")):
        fail(f"a streamed reference of {job['gguf']} reads its saved copy (float32 safetensors in "
             f"$LLORCH_REFERENCE_MODELS), which could not be written: it is larger than "
             f"$LLORCH_REFERENCE_CACHE_GB (default 8), or the disk is full. Raise the one or free the other, "
             f"or give the Hugging Face checkpoint with --hf DIR", 4)
    return saved


def dense(path):
    """What makes transformers unpack every GGUF weight to floats at load: 4.x always does; 5.x
    keeps quantized blocks and multiplies them with its own kernels where it can, which would
    make the reference compute with llama.cpp's quantized arithmetic instead of float64."""
    if not TRANSFORMERS_5:
        return {}
    from transformers import GgufConfig

    return {"quantization_config": GgufConfig(gguf_file=os.path.basename(path), dequantize=True)}


def make_room(root, model):
    """Whether the saved copies may take this model too: they are a cache,
    held to $LLORCH_REFERENCE_CACHE_GB (default 8) by dropping the least
    recently used; a model larger than the whole budget is not saved."""
    budget = float(os.environ.get("LLORCH_REFERENCE_CACHE_GB") or 8) * 1e9
    # Tied weights (an embedding that is also the output) are one storage, saved once.
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.state_dict().values()}
    size = sum(storages.values())
    if size > budget:
        return False
    os.makedirs(root, exist_ok=True)

    def used(entry):
        return sum(f.stat().st_size for f in os.scandir(entry) if f.is_file())

    entries = sorted(
        (e for e in os.scandir(root) if e.is_dir() and ".partial-" not in e.name),
        key=lambda e: e.stat().st_mtime,
    )
    total = sum(used(e.path) for e in entries)
    for e in entries:
        if total + size <= budget:
            break
        total -= used(e.path)
        shutil.rmtree(e.path, ignore_errors=True)
    return True


class GeluTable(torch.nn.Module):
    """ggml's CPU GELU: f16(gelu(f16(x))) through a 65536-entry table, x outside (-10, 10) passed or zeroed."""

    def forward(self, x):
        x16 = x.to(torch.float16).to(x.dtype)
        y = 0.5 * x16 * (1.0 + torch.tanh(0.7978845608028654 * x16 * (1.0 + 0.044715 * x16 * x16)))
        y = y.to(torch.float16).to(x.dtype)
        return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))


def f16(x):
    return x.to(torch.float16).to(x.dtype)


class Recorder:
    """Keeps the tensors a job names, or (`everything`) every floating-point
    tensor the forward pass makes, once each, in the order they are made; one
    equal byte for byte to a tensor kept before is recorded as its alias."""

    def __init__(self, wanted=None):
        self.wanted = wanted  # a set of capture names, or None: everything
        self.tensors, self.order, self.aliases, self.digests = {}, [], {}, {}
        # Tensors taken after the pass (the cache, probabilities from output_attentions):
        # made inside their layer, but at no known place in its order.
        self.late = set()

    def wants(self, name):
        return self.wanted is None or name in self.wanted

    def keep(self, name, t, late=False):
        if not self.wants(name) or not torch.is_tensor(t) or not t.is_floating_point():
            return
        if late:
            self.late.add(name)
        t = t.detach().clone()
        if self.wanted is None:
            if name in self.tensors:
                return  # a module called twice: its first call
            # The same bytes in the same shape: one tensor under two names.
            digest = (tuple(t.shape), hashlib.sha1(t.contiguous().numpy().tobytes()).digest())
            first = self.digests.setdefault(digest, name)
            if first != name:
                self.aliases.setdefault(first, []).append(name)
                return
        if name not in self.tensors:
            self.order.append(name)
        self.tensors[name] = t


class Attention:
    """Observes what attention multiplies, without changing it (but for
    f16_attn, which rounds it as ggml does). Where the model's module has
    `eager_attention_forward`, that is wrapped: Q and K after rotary
    embeddings, V, and the probabilities, per layer. Older modelling code
    computes attention inline: there `apply_rotary_pos_emb` is wrapped (its
    n-th call is layer n's Q and K) and the probabilities come from
    `output_attentions`."""

    def __init__(self, model, recorder, round_f16=False):
        self.namespace = sys.modules[type(model).__module__]
        self.recorder, self.round = recorder, round_f16
        self.eager = getattr(self.namespace, "eager_attention_forward", None)
        self.rope = getattr(self.namespace, "apply_rotary_pos_emb", None)
        if self.round and self.eager is None:
            raise Unavailable(f"{type(model).__name__}'s module has no eager_attention_forward to round attention in")

    def __enter__(self):
        keep, original = self.recorder.keep, self.eager
        if original is not None:

            def observed(module, query, key, value, attention_mask, *args, **kwargs):
                l = module.layer_idx
                for name, t in (("query", query), ("key", key), ("value", value)):
                    keep(f"attn.{l}.{name}", t)
                if self.round:
                    query, key, value = f16(query), f16(key), f16(value)
                out, probs = original(module, query, key, value, attention_mask, *args, **kwargs)
                keep(f"attentions.{l}", probs)
                if self.round:
                    # ggml multiplies the probabilities with the f16 V in f16 too.
                    n_rep = probs.shape[1] // value.shape[1]
                    v = value.repeat_interleave(n_rep, dim=1)
                    out = torch.matmul(f16(probs), v).transpose(1, 2).contiguous()
                return out, probs

            self.namespace.eager_attention_forward = observed
        elif self.rope is not None:
            rope, calls = self.rope, [0]

            def rotated(q, k, *args, **kwargs):
                q, k = rope(q, k, *args, **kwargs)
                keep(f"attn.{calls[0]}.query", q)
                keep(f"attn.{calls[0]}.key", k)
                calls[0] += 1
                return q, k

            self.namespace.apply_rotary_pos_emb = rotated
        return self

    def __exit__(self, *exc):
        if self.eager is not None:
            self.namespace.eager_attention_forward = self.eager
        if self.rope is not None:
            self.namespace.apply_rotary_pos_emb = self.rope


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


def hook_modules(model, recorder):
    """Forward hooks for the module outputs (`path`) and inputs (`path:input`) the recorder wants."""
    hooks = []
    wanted = recorder.wanted
    for path, module in model.named_modules():
        if not path:
            continue  # the whole model: its output is the logits, which lm_head gives
        if recorder.wants(path + ":input"):

            def pre_hook(_mod, args, kwargs, name=path + ":input"):
                first = next((a for a in args if torch.is_tensor(a)), None)
                if first is None:
                    first = kwargs.get("hidden_states", next((v for v in kwargs.values() if torch.is_tensor(v)), None))
                recorder.keep(name, first)

            hooks.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if recorder.wants(path):

            def hook(_mod, _inp, out, name=path):
                recorder.keep(name, out[0] if isinstance(out, (tuple, list)) and out else out)

            hooks.append(module.register_forward_hook(hook))
    if wanted is not None:
        # A module the model does not have is named, not ignored.
        for name in wanted:
            if name.split(".")[0] not in ("attn", "present", "attentions"):
                path, _, side = name.partition(":")
                if side not in ("", "input"):
                    raise ValueError(f"capture {name!r}: after ':' only `input` is known")
                model.get_submodule(path)
    return hooks


def progress(model, variant, every=5.0):
    """Hooks that say, at most every `every` seconds, which layer of the pass has run and about
    how long the rest will take (`progress: ` lines, which xtask shows as they come)."""
    _, layers = decoder_layers(model)
    started, shown = time.time(), [time.time()]

    def done(l):
        now = time.time()
        if now - shown[0] >= every or l + 1 == len(layers):
            shown[0] = now
            left = (now - started) / (l + 1) * (len(layers) - l - 1)
            sys.stderr.write(f"progress: reference {variant}: layer {l + 1} of {len(layers)} "
                             f"({now - started:.0f} s; about {left:.0f} s left)\n")
            sys.stderr.flush()

    return [layer.register_forward_hook(lambda *_a, l=l: done(l)) for l, layer in enumerate(layers)]


def run_variant(model, variant, job, wanted):
    """One forward pass in the variant's dtype and emulations; the recorder holds what it kept."""
    dtype = torch.float64 if variant.startswith("f64") else torch.float32
    flags = set(variant.split("+")[1:])
    unknown = flags - {"gelu_table", "f16_attn", "replay"}
    if unknown:
        raise ValueError(f"unknown variant flags {sorted(unknown)} in {variant!r}")
    m = model.to(dtype)
    recorder = Recorder(wanted)
    swap_gelus(m, "gelu_table" in flags)
    hooks = hook_modules(m, recorder)
    streamed = getattr(m, "_llorch_streamed", None)
    if streamed is not None:
        hooks += streamed.attach(dtype)
    if "replay" in flags:
        hooks += replayed(m, job, dtype)
    hooks += progress(m, variant)
    try:
        with torch.no_grad(), Attention(m, recorder, "f16_attn" in flags):
            out = m(input_ids=torch.tensor([job["tokens"]]), use_cache=True, return_dict=True, output_attentions=True)
    except (RuntimeError, NotImplementedError) as e:
        if streamed is None or "meta" not in str(e):
            raise
        raise ValueError(f"{type(m).__name__} uses a weight outside the module that holds it, which a streamed "
                         f"reference has not loaded then ({str(e).splitlines()[0]}): run the whole-model "
                         f"reference (--reference whole)") from None
    finally:
        for h in hooks:
            h.remove()
        swap_gelus(m, False)
    # State-space models have no attention, and their outputs no `attentions`.
    for l, probs in enumerate(getattr(out, "attentions", None) or ()):
        if f"attentions.{l}" not in recorder.tensors:
            recorder.keep(f"attentions.{l}", probs, late=True)
    # With f16_attn the cache is what ggml stores: f16.
    stored = f16 if "f16_attn" in flags else (lambda t: t)
    for l, k, v in cache_layers(out):
        recorder.keep(f"present.{l}.key", stored(k), late=True)
        recorder.keep(f"present.{l}.value", stored(v), late=True)
    recorder.keep("logits", out.logits, late=True)
    return recorder, out.logits[0, -1]


def cache_layers(out):
    """Each attention layer's (layer, keys, values) of the pass's cache:
    transformers 5 calls it `cache` (4.x `past_key_values`), its layers hold
    `keys` and `values` (4.56 on; a hybrid model's other layers hold none);
    older caches are tuples, or convert to them; a state-space cache has none."""
    cache = out["cache"] if "cache" in out else out.get("past_key_values")
    if cache is None:
        return []
    if hasattr(cache, "layers"):
        return [(l, layer.keys, layer.values) for l, layer in enumerate(cache.layers)
                if getattr(layer, "keys", None) is not None]
    if hasattr(cache, "to_legacy_cache"):
        cache = cache.to_legacy_cache()
    if not isinstance(cache, (tuple, list)):
        return []
    return [(l, k, v) for l, (k, v) in enumerate(cache)]


def layer_of(name):
    """The layer a capture belongs to: the first number among its dotted parts (None before and after the layers)."""
    for part in name.partition(":")[0].split("."):
        if part.isdigit():
            return int(part)
    return None


def write_checkpoints(recorder, checkpoints, vdir):
    for cp in checkpoints:
        where = f"checkpoint {cp['key']} ({cp['capture']})"
        if cp["capture"] not in recorder.tensors:
            raise ValueError(
                f"{where}: no such capture; known: <module path>[:input], attn.<l>.query|key|value, "
                f"present.<l>.key|value, attentions.<l>"
            )
        x = apply_ops(recorder.tensors[cp["capture"]], cp["ops"], where)
        if list(x.shape) != cp["shape"]:
            raise ValueError(f"{where}: the ops give shape {list(x.shape)}, the checkpoint file has {cp['shape']}")
        np.save(os.path.join(vdir, cp["stem"] + ".npy"), np.ascontiguousarray(x.numpy()))


def write_everything(recorder, vdir):
    """Every tensor kept, as <order>.npy, and tensors.json: name, layer, order, shape, file, aliases."""
    index = []
    for order, name in enumerate(recorder.order):
        t = recorder.tensors[name]
        file = f"{order:04}.npy"
        np.save(os.path.join(vdir, file), np.ascontiguousarray(t.numpy()))
        index.append({"name": name, "layer": layer_of(name), "order": order, "shape": list(t.shape),
                      "file": file, "aliases": recorder.aliases.get(name, []), "late": name in recorder.late})
    json.dump(index, open(os.path.join(vdir, "tensors.json"), "w"), indent=1)


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
        elif kind == "scale":
            x = x * op["by"]
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
    model, from_saved = load_model(job)
    loaded = time.time() - started
    out_dir = job["out"]
    everything = job.get("everything", False)
    wanted = None if everything else {cp["capture"] for cp in job["checkpoints"]}
    next_tokens, unavailable = {}, {}
    variants = list(job["variants"])
    for variant in variants:
        try:
            recorder, logits = run_variant(model, variant, job, wanted)
        except Unavailable as e:
            unavailable[variant] = str(e)
            continue
        except RuntimeError as e:
            # transformers' grouped MoE matmuls refuse float64: that variant cannot be had.
            if not variant.startswith("f64"):
                raise
            unavailable[variant] = str(e).splitlines()[0]
            if everything and "f32" not in variants:
                variants.append("f32")  # the matcher's tensors, where f64 cannot be had
            continue
        next_tokens[variant] = int(logits.argmax())
        vdir = os.path.join(out_dir, variant)
        os.makedirs(vdir, exist_ok=True)
        # The last position's logits: a different greedy token is then judged a near tie or not.
        np.save(os.path.join(vdir, "next_logits.npy"), np.ascontiguousarray(logits.detach().numpy()))
        if everything:
            write_everything(recorder, vdir)
        else:
            write_checkpoints(recorder, job["checkpoints"], vdir)
    if len(unavailable) == len(variants):
        fail(f"no variant could run: {unavailable}", 4)
    info = {
        "model": type(model).__name__, "torch": torch.__version__, "transformers": transformers.__version__,
        "numpy": np.__version__, "attn_implementation": model.config._attn_implementation,
        "variants": [v for v in variants if v not in unavailable], "unavailable": unavailable,
        "next_token": next_tokens, "checkpoints": len(job["checkpoints"]),
        "load_seconds": loaded, "loaded_from_saved": from_saved, "seconds": time.time() - started,
        "streamed": bool(job.get("stream")), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    json.dump(info, open(os.path.join(out_dir, "reference.json"), "w"), indent=2)
    what = "every tensor" if everything else f"{len(job['checkpoints'])} checkpoints"
    how = "streamed layer by layer" if info["streamed"] else "whole model"
    print(f"reference: {type(model).__name__}, {what} x {len(info['variants'])} variants "
          f"in {info['seconds']:.1f} s (loading {loaded:.1f} s{' from the saved copy' if from_saved else ''}; {how}, "
          f"peak RSS {info['peak_rss_bytes'] / 1e9:.2f} GB; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, eager attention)")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, OSError, AttributeError) as e:
        fail(f"{type(e).__name__}: {e}", 4)
