"""For `reference.py`: the model one layer at a time, and each layer fed llama.cpp's input.

`streamed_model` builds transformers' model with its weights left in a Hugging Face checkpoint
(the one a GGUF was converted from, or the reference's saved copy of a GGUF); `Streamed` loads each decoder layer (and each other module holding weights) just
before it runs and frees it after; `replayed` feeds each decoder layer but the first llama.cpp's
own input of that layer.
"""

import os

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM


def streamed_model(directory, eager):
    """The model of the checkpoint in `directory` with its weights left there (`Streamed`): built
    with every parameter on the meta device and its buffers (rotary frequencies) computed as a
    whole model's are."""
    from accelerate import init_empty_weights

    config = transformers.AutoConfig.from_pretrained(directory)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, **eager).eval()
    model._llorch_streamed = Streamed(model, directory)
    return model


def decoder_layers(model):
    """The model's path and list of decoder layers: the ModuleList that holds most of its parameters."""
    lists = [(p, m) for p, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of layers")
    return max(lists, key=lambda pm: sum(p.numel() for p in pm[1].parameters()))


class Streamed:
    """A model's weights read from its safetensors only while they are used: each decoder layer
    loaded (in the pass's dtype, through float32 as from_pretrained reads them) just before it
    runs and freed after it; so each other module that holds weights (the embedding, the last
    norm, the output head, alone). Peak memory is one layer's weights plus the activations,
    whatever the model's size; the arithmetic is the whole model's, so are the results."""

    def __init__(self, model, directory):
        from safetensors import safe_open

        self.files = {}
        for name in sorted(os.listdir(directory)):
            if name.endswith(".safetensors"):
                with safe_open(os.path.join(directory, name), "pt") as f:
                    self.files.update((k, os.path.join(directory, name)) for k in f.keys())
        names = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name)
        # A tied output head has no weight of its own in the checkpoint: the embedding's.
        tied = {}
        out, inp = model.get_output_embeddings(), model.get_input_embeddings()
        if out is not None and inp is not None and getattr(model.config, "tie_word_embeddings", False):
            tied[id(out.weight)] = [n for n, p in model.named_parameters(remove_duplicate=False) if p is inp.weight]
        path, layers = decoder_layers(model)
        self.units = [(f"{path}.{i}", layer, True) for i, layer in enumerate(layers)]
        self.units += [(p, m, False) for p, m in model.named_modules()
                       if not (p == path or p.startswith(path + ".")) and any(True for _ in m.parameters(recurse=False))]
        self.slots, missing = {}, []
        for unit_path, unit, recurse in self.units:
            slots = []
            for sub, module in (unit.named_modules(prefix=unit_path) if recurse else [(unit_path, unit)]):
                for attr, p in module.named_parameters(recurse=False):
                    key = next((n for n in names[id(p)] + tied.get(id(p), []) if n in self.files), None)
                    if key is None:
                        missing.append(f"{sub}.{attr}")
                    slots.append((module, attr, key))
            self.slots[unit_path] = slots
        if missing:
            raise ValueError(
                f"a streamed reference reads each weight under its own name, and {directory} has none for "
                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} (transformers renames or fuses "
                f"this architecture's weights as it loads them): run the whole-model reference (--reference whole)")

    def attach(self, dtype):
        """Hooks that load each unit's weights before it runs and free them after; their handles."""
        from safetensors import safe_open

        def load(slots):
            by_file = {}
            for module, attr, key in slots:
                by_file.setdefault(self.files[key], []).append((module, attr, key))
            for file, wanted in by_file.items():
                # Opened and closed each time: a mapping kept open would keep every page it read resident.
                with safe_open(file, "pt") as f:
                    for module, attr, key in wanted:
                        w = f.get_tensor(key).to(torch.float32).to(dtype)
                        setattr(module, attr, torch.nn.Parameter(w, requires_grad=False))

        def free(slots):
            for module, attr, _key in slots:
                p = getattr(module, attr)
                setattr(module, attr, torch.nn.Parameter(torch.empty(p.shape, dtype=dtype, device="meta"),
                                                         requires_grad=False))

        hooks = []
        for unit_path, unit, _ in self.units:
            slots = self.slots[unit_path]
            hooks.append(unit.register_forward_pre_hook(lambda *_a, s=slots: load(s), prepend=True))
            hooks.append(unit.register_forward_hook(lambda *_a, s=slots: free(s)))
        return hooks


def replayed(model, job, dtype):
    """Pre-hooks that feed each decoder layer but the first llama.cpp's own input of that layer
    (the job's `layer_inputs`: the previous layer's output in llama.cpp, [n_tokens, n_embd]), so
    that what the layer computes is compared from the same input: the error it adds."""
    inputs = {int(l): v for l, v in job.get("layer_inputs", {}).items()}
    if not inputs:
        raise ValueError("the replay variant needs the job's layer_inputs (llama.cpp's input of each layer)")
    _, layers = decoder_layers(model)
    hooks = []
    for l, layer in enumerate(layers):
        if l not in inputs:
            continue
        given = torch.from_numpy(np.load(inputs[l])).to(dtype).unsqueeze(0)

        def feed(_mod, args, kwargs, given=given, l=l):
            first = next((i for i, a in enumerate(args) if torch.is_tensor(a)), None)
            own = args[first] if first is not None else kwargs.get("hidden_states")
            if own is None or own.shape != given.shape:
                raise ValueError(f"layer {l}: its input has shape {None if own is None else list(own.shape)}, "
                                 f"llama.cpp's {list(given.shape)}")
            if first is not None:
                args = args[:first] + (given,) + args[first + 1:]
            else:
                kwargs = {**kwargs, "hidden_states": given}
            return args, kwargs

        hooks.append(layer.register_forward_pre_hook(feed, with_kwargs=True, prepend=True))
    return hooks
