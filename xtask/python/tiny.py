"""Tiny random Hugging Face models for `cargo xtask model --tiny ARCH`.

    tiny.py ARCH OUT_DIR --seed S --tokenizer DIR [--tokenizer-gguf GGUF]

Writes a seeded random model of one architecture that both transformers and
llama.cpp's pinned converter know (config.json, model.safetensors, tokenizer
files) into OUT_DIR: 2 layers, 128 wide, 4 heads over 2 KV heads, in float32.
The tokenizer is SmolLM2's (a GPT-2-style BPE the converter recognises),
which transformers reads out of the SmolLM2 GGUF once and keeps in DIR.

Every weight is drawn from the seed, norms and biases included: a norm left
at transformers' initial 1 and a bias at 0 would make a node and its
neighbour (a norm before and after its weight) equal, and a matcher could
not tell them apart; norm weights of 1 + 0.5 N(0, 1) keep the two 6 dB apart. Linear weights have a standard deviation of
1.5/sqrt(fan_in), so activations stay near unit scale through the layers
and the attention is far from uniform.
"""

import argparse
import json
import os
import sys

import torch
import transformers
from tokenizers import decoders, processors
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

SHAPE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=320, max_position_embeddings=2048, tie_word_embeddings=False)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1)

# The architectures, as transformers' model types, with what each needs beyond SHAPE.
ARCHS = {
    "llama": {},
    "mistral": dict(sliding_window=None),
    "qwen3": dict(head_dim=32),
    "starcoder2": dict(use_bias=True),
    "stablelm": dict(use_qkv_bias=True),
    "falcon": dict(num_kv_heads=1, multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False),
    "qwen2_moe": dict(MOE, shared_expert_intermediate_size=128),
    # Qwen3's MoE models renormalise the top-k routing weights, as llama.cpp's qwen3moe graph
    # always does (transformers' config defaults to not doing it).
    "qwen3_moe": dict(MOE, head_dim=32, norm_topk_prob=True),
}
# Falcon's config has its own names for the shape.
NOT_FOR = {"falcon": {"num_key_value_heads", "intermediate_size", "tie_word_embeddings"}}


def tokenizer(cache, gguf):
    """SmolLM2's tokenizer as its Hugging Face repository has it: transformers reads it out of
    the GGUF as a llama tokenizer that adds a BOS, which SmolLM2's does not (and the converter
    recognises a BPE pre-tokenizer by the ids it gives a test string, BOS included); and a
    byte-level BPE, not a llama one with byte fallback, which the llama converter would take
    for a SentencePiece vocabulary."""
    if not os.path.isfile(os.path.join(cache, "tokenizer.json")):
        if not gguf:
            sys.exit(f"tiny: no tokenizer in {cache}, and no --tokenizer-gguf to make it from")
        read = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
        backend = read.backend_tokenizer
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        backend.decoder = decoders.ByteLevel()
        backend.model.byte_fallback = False
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=read.bos_token,
                                      eos_token=read.eos_token, unk_token=read.unk_token)
        tok.save_pretrained(cache)
    return AutoTokenizer.from_pretrained(cache)


def randomise(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise * (1.5 / p.shape[-1] ** 0.5))
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:  # a norm's weight
                p.copy_(1.0 + 0.5 * noise)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("arch", choices=sorted(ARCHS))
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--tokenizer-gguf")
    args = parser.parse_args()
    tok = tokenizer(args.tokenizer, args.tokenizer_gguf)
    shape = {k: v for k, v in SHAPE.items() if k not in NOT_FOR.get(args.arch, ())}
    config = AutoConfig.for_model(args.arch, **shape, **ARCHS[args.arch], vocab_size=len(tok),
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  dtype="float32")
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomise(model, args.seed)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    json.dump({"arch": args.arch, "seed": args.seed, "class": type(model).__name__, "parameters": params,
               "transformers": transformers.__version__},
              open(os.path.join(args.out, "llorch-tiny.json"), "w"), indent=2)
    print(f"tiny: {type(model).__name__}, {params:,} parameters, seed {args.seed}, into {args.out}")


if __name__ == "__main__":
    main()
