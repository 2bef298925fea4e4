"""Random Hugging Face models at the real widths of a published model, for
`cargo xtask model --random ARCH --size 1b|7b`.

    sized.py ARCH SIZE OUT_DIR --seed S --tokenizer DIR --tokenizer-gguf GGUF --conversion DIR
    sized.py --sizes --conversion DIR     (JSON: architecture -> size -> the published model)

The widths (hidden size, layers, heads, KV heads, FFN, head dim, rotary base, norm epsilon, tied
output) are those of the published config SIZES names; the vocabulary is SmolLM2's tokenizer's
(49,152 tokens, tiny.py's), not the published one's, so that the converter knows the tokenizer.
Weights are drawn by tiny.py's rule (linear weights N(0, 1.5/sqrt(fan_in)), norms 1 + 0.5 N(0, 1),
biases 0.1 N(0, 1)), each tensor from its own generator (the seed and the tensor's name), and
written in bfloat16 one shard at a time: a 7B model takes about 15 GB of disk and one shard of
memory. Random weights at real widths test time, memory and disk, not trained numerics.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import causal_lms, tokenizer_for  # noqa: E402

# Per architecture and size: the published model whose widths are taken, and those widths.
SIZES = {
    "llama": {
        "1b": ("meta-llama/Llama-3.2-1B (without its rope scaling)",
               dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=8192, head_dim=64, rope_theta=500000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True)),
        "7b": ("meta-llama/Llama-2-7b-hf",
               dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                    intermediate_size=11008, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=False)),
    },
    "mistral": {
        "7b": ("mistralai/Mistral-7B-v0.1 (without a sliding window, as the converter writes none)",
               dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=14336, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-5,
                    sliding_window=None, tie_word_embeddings=False)),
    },
    "qwen2": {
        "1b": ("Qwen/Qwen2.5-1.5B",
               dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                    intermediate_size=8960, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)),
        "7b": ("Qwen/Qwen2.5-7B",
               dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                    intermediate_size=18944, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)),
    },
}
SHARD_BYTES = 2_000_000_000
# Room for the checkpoint and its f16 GGUF, with a margin.
DISK_FACTOR = 2.1


def draw(name, shape, seed):
    """tiny.py's rule for one tensor, from a generator of its own."""
    digest = int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:15], 16)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(digest), dtype=torch.float32)
    if len(shape) >= 2:
        return noise * (1.5 / shape[-1] ** 0.5)
    if name.endswith("bias"):
        return 0.1 * noise
    return 1.0 + 0.5 * noise


def shards(params):
    """The parameters, in name order, cut into shards of about SHARD_BYTES in bfloat16."""
    out, current, size = [], [], 0
    for name, shape in sorted(params.items()):
        bytes_ = 2 * torch.Size(shape).numel()
        if current and size + bytes_ > SHARD_BYTES:
            out.append(current)
            current, size = [], 0
        current.append(name)
        size += bytes_
    return out + [current] if current else out


def write(params, out, seed):
    """Every shard and the index, with progress and an estimate of what is left."""
    planned = shards(params)
    weight_map, total, started = {}, 0, time.time()
    for i, names in enumerate(planned):
        file = f"model-{i + 1:05}-of-{len(planned):05}.safetensors"
        tensors = {n: draw(n, params[n], seed).to(torch.bfloat16) for n in names}
        save_file(tensors, os.path.join(out, file), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update((n, file) for n in names)
        del tensors
        done = time.time() - started
        eta = done / (i + 1) * (len(planned) - i - 1)
        print(f"sized: shard {i + 1}/{len(planned)} written ({total / 1e9:.1f} GB, {done:.0f} s; about {eta:.0f} s left)",
              file=sys.stderr, flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    json.dump(index, open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=2)
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("arch", nargs="?")
    parser.add_argument("size", nargs="?")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--sizes", action="store_true", help="print SIZES' published models, as JSON")
    parser.add_argument("--conversion", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer")
    parser.add_argument("--tokenizer-gguf")
    args = parser.parse_args()
    if args.sizes:
        print(json.dumps({a: {s: w[0] for s, w in sizes.items()} for a, sizes in SIZES.items()}))
        return
    known = causal_lms(args.conversion)
    if args.size not in SIZES.get(args.arch, {}) or args.arch not in known:
        offered = ", ".join(f"{a} {s}" for a, sizes in SIZES.items() for s in sizes)
        sys.exit(f"sized: no published widths of {args.arch} at {args.size} here; these are: {offered} "
                 f"(and --size tiny for any architecture: `cargo xtask conformance --list`)")
    published, widths = SIZES[args.arch][args.size]
    write_tokenizer, vocab, special = tokenizer_for(args.arch, args.tokenizer, args.tokenizer_gguf)
    config = AutoConfig.for_model(args.arch, **widths, vocab_size=vocab, **special, dtype="bfloat16")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    count = sum(torch.Size(s).numel() for s in params.values())
    parent = os.path.dirname(os.path.abspath(args.out))
    need, free = DISK_FACTOR * 2 * count, shutil.disk_usage(parent).free
    if need > free:
        sys.exit(f"sized: {args.arch} {args.size} has {count / 1e9:.2f}B parameters: {2 * count / 1e9:.1f} GB in "
                 f"bfloat16 and as much again for its f16 GGUF ({need / 1e9:.0f} GB with a margin), and "
                 f"{parent} has {free / 1e9:.0f} GB free: free some, or choose a smaller --size")
    print(f"sized: {type(model).__name__} at the widths of {published}: {count / 1e9:.2f}B parameters, "
          f"{2 * count / 1e9:.1f} GB in bfloat16, seed {args.seed}", file=sys.stderr, flush=True)
    os.makedirs(args.out, exist_ok=True)
    config.architectures = [type(model).__name__]  # what the converter reads the architecture from
    config.save_pretrained(args.out)
    write_tokenizer(args.out)
    total = write(params, args.out, args.seed)
    json.dump({"arch": args.arch, "size": args.size, "widths_of": published, "seed": args.seed,
               "class": type(model).__name__, "parameters": count, "bytes": total,
               "transformers": transformers.__version__,
               "sized_py": hashlib.sha256(open(__file__, "rb").read()).hexdigest()[:12]},
              open(os.path.join(args.out, "llorch-sized.json"), "w"), indent=2)
    print(f"sized: {type(model).__name__}, {count:,} parameters, into {args.out}")


if __name__ == "__main__":
    main()
