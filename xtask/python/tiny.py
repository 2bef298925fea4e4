"""Tiny random Hugging Face models of any architecture, for `cargo xtask model --tiny ARCH`.

    tiny.py ARCH OUT_DIR --seed S --tokenizer DIR --conversion DIR [--tokenizer-gguf GGUF]
    tiny.py --list --conversion DIR

Writes a seeded random model of one architecture (a transformers `model_type`)
into OUT_DIR: config.json, model.safetensors, tokenizer files and
llorch-tiny.json. The config is the config class's own defaults shrunk by rule
(SHRINK): 2 layers (one of each kind a hybrid model has), 128 wide, 4 heads
over 2 KV heads, small experts, in float32. Where the rule cannot work, an
override in OVERRIDES says what and why. ARCH must be known to both
transformers (as a causal LM) and the converter whose `conversion` package is
in the --conversion directory; `--list` prints those, as JSON.

Tokenizers: SmolLM2's (a GPT-2-style BPE the converter recognises by its
pre-tokenizer hash), which transformers reads out of the SmolLM2 GGUF once
and keeps in DIR; or, for the architectures whose converter reads only a
SentencePiece `tokenizer.model` (SENTENCEPIECE), one trained here with the
`sentencepiece` library on words of that vocabulary, kept beside it.

Every weight is drawn from the seed, norms and biases included: a norm left
at transformers' initial 1 and a bias at 0 would make a node and its
neighbour (a norm before and after its weight) equal, and a matcher could
not tell them apart; norm weights of 1 + 0.5 N(0, 1) keep the two 6 dB apart.
Linear weights have a standard deviation of 1.5/sqrt(fan_in), so activations
stay near unit scale through the layers and the attention is far from uniform.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys

import torch
import transformers
from tokenizers import decoders, processors
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CONFIG_MAPPING, PreTrainedTokenizerFast

# The rule: each of these a config has (under its own name, through its attribute_map) is set so.
SHRINK = dict(
    hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    intermediate_size=320, max_position_embeddings=2048,
    # Mixtures of experts: 4 experts, 2 per token, one shared, every layer sparse but the first where
    # a config keeps dense ones first.
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
    shared_expert_intermediate_size=128, shared_experts_intermediate_size=128, n_shared_experts=1, decoder_sparse_step=1, first_k_dense_replace=1,
    n_group=1, topk_group=1,
    # Multi-head latent attention.
    q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=32,
    # Sparse attention's indexer (DeepSeek V3.2).
    index_n_heads=4, index_head_dim=32, index_topk=8,
    # Gemma 3n's KV sharing (two layers leave none to share). Its per-layer input width stays:
    # llama.cpp's gemma3n takes it as 256.
    num_kv_shared_layers=0, laurel_rank=16,
    # State-space and linear-attention layers.
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
    mamba_n_heads=8, mamba_d_head=32, mamba_d_state=16, state_size=16, n_groups=1, mamba_n_groups=1,
    # Sliding windows shorter than the matching prompt, so that they are tested.
    sliding_window=16,
    # Gemma 2's query scale is 1/sqrt(this); its checkpoints set it to the head dim, as llama.cpp assumes.
    query_pre_attn_scalar=32,
)
# A tiny model is at most this big (SmolLM2's vocabulary alone is 12.6M parameters, untied).
MAX_PARAMETERS = 40_000_000

# Keys whose None means "off" or "derived", left None; any other key the config has is set, None or not.
NONE_MEANS_OFF = {"head_dim", "sliding_window", "q_lora_rank", "query_pre_attn_scalar"}

# Where the rule cannot work: the architecture, what it needs beyond SHRINK, and why.
OVERRIDES = {
    "mistral": (dict(sliding_window=None), "the converter writes no sliding window for mistral"),
    "starcoder2": (dict(use_bias=True), "starcoder2's checkpoints have biases"),
    "stablelm": (dict(use_qkv_bias=True), "Q/K/V biases as StableLM 2's checkpoints have"),
    "falcon": (dict(num_kv_heads=1, multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False,
                    num_key_value_heads=None, intermediate_size=None),
               "Falcon-7B's layout (one KV head, parallel attention); its config has no KV-head or FFN keys"),
    "qwen3_moe": (dict(norm_topk_prob=True),
                  "Qwen3's MoE models renormalise the top-k routing weights, as llama.cpp's qwen3moe graph always does "
                  "(transformers' config defaults to not doing it)"),
    "bitnet": (dict(tie_word_embeddings=True), "llama.cpp's bitnet has no output weight: BitNet ties it"),
    "dots3_note_text": (dict(num_key_value_heads=4, head_dim=32),
                        "its config requires as many KV heads as heads, and a sliding layer's head dim of "
                        "qk_nope_head_dim + qk_rope_head_dim"),
    "bamba": (dict(attn_layer_indices=[1]),
              "one attention layer of the two, as Bamba interleaves them (the default, none, is a model the converter refuses)"),
    "gpt2": (dict(n_ctx=2048), "published GPT-2 configs have n_ctx, which the converter reads; transformers 5 no longer writes it"),
    "gpt-sw3": (dict(n_ctx=2048), "as gpt2"),
    "deepseek_v32": (dict(add_bos_token=True), "the converter asks for a tokenizer that adds a BOS"),
    "hunyuan_v1_dense": (dict(head_dim=32), "its config leaves head_dim None, which its model cannot derive"),
    "hunyuan_v1_moe": (dict(head_dim=32), "as hunyuan_v1_dense"),
    "dots1": (dict(num_key_value_heads=4), "dots.llm1 is multi-head; its converter writes no KV head count"),
    "phi": (dict(num_key_value_heads=4), "Phi-1 and 2 are multi-head; the converter writes no KV head count for phi2"),
    "olmoe": (dict(num_key_value_heads=4), "OLMoE is multi-head; llama.cpp sizes its K norm by the model width"),
    "falcon_h1": (dict(head_dim=32), "published Falcon-H1 configs set head_dim, which the converter reads"),
    "gemma4_assistant": (dict(hidden_size_per_layer_input=0), "its config requires no per-layer input"),
    "lfm2": (dict(layer_types=["conv", "full_attention"], full_attn_idxs=[1]),
             "LFM2's checkpoints interleave short convolutions with attention; the config's default is attention only"),
    "lfm2_moe": (dict(layer_types=["conv", "full_attention"], num_dense_layers=1),
                 "as lfm2; the config's default layer_types (None) cannot be built"),
}

# Special tokens a converter looks up by name, added to the tokenizer (they do not change its hash).
SPECIAL_TOKENS = {
    arch: ["<|user|>", "<|observation|>", "[gMASK]", "<sop>", "<eop>", "<|assistant|>", "<|system|>"]
    for arch in ("glm", "glm4", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "param2moe", "sarvam_moe")
}
SPECIAL_TOKENS["solar_open"] = ["<unk>", "<|startoftext|>"]
# The architectures whose converter reads a SentencePiece tokenizer.model and nothing else.
SENTENCEPIECE = {"gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "gemma3n", "gemma3n_text", "ernie4_5", "jamba", "minicpm3", "nemotron",
                 "gemma4", "gemma4_text", "gemma4_assistant", "gemma4_unified", "gemma4_unified_assistant",
                 "ernie4_5_moe"}


def causal_lms(conversion_dir):
    """transformers' causal-LM model types whose class the converter registers."""
    sys.path.insert(0, conversion_dir)
    from conversion import TEXT_MODEL_MAP
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL
    return {t: c for t, c in sorted(CAUSAL.items()) if c in TEXT_MODEL_MAP}


# The tokenizer's vocabulary size, once chosen (per-layer embeddings of sub-configs need it).
VOCAB = [0]


def shrunk_config(arch, vocab, special):
    """The config class's defaults, shrunk by SHRINK and OVERRIDES; a composite model's
    sub-configs (text, vision, audio) shrunk by the same rule."""
    cls = CONFIG_MAPPING[arch]
    defaults = cls().to_dict()
    VOCAB[0] = vocab
    wanted = shrunk(cls, defaults)
    for key, value in defaults.items():
        if key.endswith("_config") and isinstance(value, dict) and value.get("model_type") in CONFIG_MAPPING:
            sub = shrunk(CONFIG_MAPPING[value["model_type"]], value)
            if key == "text_config":
                sub.update(vocab_size=vocab, **special)
            wanted[key] = {**value, **sub}
    extra, _why = OVERRIDES.get(arch, ({}, ""))
    for k, v in extra.items():
        k = cls.attribute_map.get(k, k)
        if v is None:
            wanted.pop(k, None)
        else:
            wanted[k] = v
    wanted.update(vocab_size=vocab, **{k: v for k, v in special.items() if k in defaults})
    return AutoConfig.for_model(arch, **wanted, dtype="float32")


def shrunk(cls, defaults):
    """SHRINK's keys that `defaults` (a config class's) has, under that class's names."""
    names = {k: cls.attribute_map.get(k, k) for k in SHRINK}
    wanted = {names[k]: v for k, v in SHRINK.items()
              if names[k] in defaults and (defaults[names[k]] is not None or k not in NONE_MEANS_OFF)}
    # Multi-head latent attention has as many KV heads as heads (the converter checks it), and
    # its rotary part is the head dim where a config has both.
    if "kv_lora_rank" in defaults:
        if names["num_key_value_heads"] in wanted:
            wanted[names["num_key_value_heads"]] = SHRINK["num_attention_heads"]
        if "head_dim" in wanted:
            wanted["head_dim"] = SHRINK["qk_rope_head_dim"]
    # State-space layers whose inner width is `expand` times the model's (the converter checks it).
    for expand in ("expand", "mamba_expand"):
        inner = (defaults.get(expand) or 0) * SHRINK["hidden_size"]
        if inner and names["intermediate_size"] in defaults:
            wanted[names["intermediate_size"]] = inner
        if inner and "mamba_d_ssm" in defaults:
            wanted["mamba_d_ssm"] = inner
        # Mamba 2's heads tile the inner width.
        if inner and "num_heads" in defaults and "head_dim" in wanted:
            wanted["num_heads"] = inner // wanted["head_dim"]
    cut = kinds_once(defaults, names["num_hidden_layers"])
    # A per-layer list of a shrunk key (intermediate_size as a list, num_attention_heads_per_layer)
    # shrinks with it.
    for key, value in cut.items():
        if isinstance(value, list) and isinstance(wanted.get(key), int):
            cut[key] = [wanted[key]] * len(value)
            continue
        for name, shrunk_to in wanted.items():
            if isinstance(value, list) and key.startswith(name + "_") and defaults.get(name) is not None:
                cut[key] = [shrunk_to if v == defaults[name] else v for v in value]
    # A period of sliding layers follows the cut layer types: the first full layer closes it.
    if "sliding_window_pattern" in defaults and "full_attention" in cut.get("layer_types", []):
        cut["sliding_window_pattern"] = cut["layer_types"].index("full_attention") + 1
    wanted.update(cut)
    # Gemma 3n's per-layer embeddings index the same vocabulary.
    if "vocab_size_per_layer_input" in defaults:
        wanted["vocab_size_per_layer_input"] = VOCAB[0]
    return wanted


def kinds_once(defaults, layers_key):
    """Per-layer lists (layer_types and the like, of any values) and per-layer maps cut to the
    layers that hold one of each kind, in order (at least 2); the layer count follows."""
    n = defaults.get(layers_key)
    if not n:
        return {}
    per_layer = {k: v for k, v in defaults.items() if isinstance(v, list) and len(v) == n}
    keep = set()
    for value in per_layer.values():
        if all(isinstance(v, str) for v in value):
            keep.update(value.index(kind) for kind in dict.fromkeys(value))
    for i in range(n):
        if len(keep) >= 2:
            break
        keep.add(i)
    keep = sorted(keep)
    out = {k: [v[i] for i in keep] for k, v in per_layer.items()}
    for key, value in defaults.items():
        if "layer" in key and isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
            by_layer = {int(k): v for k, v in value.items()}
            out[key] = {new: by_layer[old] for new, old in enumerate(keep) if old in by_layer}
    out[layers_key] = len(keep)
    return out


def bpe_tokenizer(cache, gguf):
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


def sentencepiece_model(cache, bpe):
    """A 1,024-piece SentencePiece BPE with byte fallback, trained (one thread: the same model
    every time) on the words of SmolLM2's vocabulary; its path."""
    path = os.path.join(cache + "-sentencepiece", "tokenizer.model")
    if not os.path.isfile(path):
        import sentencepiece
        words = [bpe.convert_tokens_to_string([t]).strip() for t in sorted(bpe.get_vocab(), key=bpe.get_vocab().get)]
        words = [w for w in words[:20000] if w.isprintable() and w]
        lines = [" ".join(words[i:i + 16]) for i in range(0, len(words), 16)]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staging = path + f".tmp{os.getpid()}"
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_prefix=staging, vocab_size=1024, model_type="bpe",
            byte_fallback=True, num_threads=1, minloglevel=2, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
        os.replace(staging + ".model", path)
        os.remove(staging + ".vocab")
    return path


def tokenizer_for(arch, cache, gguf):
    """The tokenizer files' writer, the vocabulary size and the special token ids."""
    bpe = bpe_tokenizer(cache, gguf)
    if arch in SPECIAL_TOKENS:
        bpe.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[arch]})
    if arch not in SENTENCEPIECE:
        special = dict(bos_token_id=bpe.bos_token_id, eos_token_id=bpe.eos_token_id, pad_token_id=bpe.eos_token_id)
        return (lambda out: bpe.save_pretrained(out)), len(bpe), special
    model = sentencepiece_model(cache, bpe)

    def write(out):
        shutil.copy(model, os.path.join(out, "tokenizer.model"))
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "add_bos_token": True},
                  open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)
    return write, 1024, dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def randomise(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise * (1.5 / p.shape[-1] ** 0.5))
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:  # a norm's weight (or a scalar such as a gate)
                p.copy_(1.0 + 0.5 * noise)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("arch", nargs="?")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--list", action="store_true", help="print the architectures, as JSON")
    parser.add_argument("--conversion", required=True, help="the directory of the converter's `conversion` package")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer")
    parser.add_argument("--tokenizer-gguf")
    args = parser.parse_args()
    known = causal_lms(args.conversion)
    if args.list:
        print(json.dumps(known))
        return
    if args.arch not in known:
        sys.exit(f"tiny: {args.arch!r} is not a model type that both transformers {transformers.__version__} "
                 f"implements as a causal LM and the pinned converter registers; those {len(known)} are: "
                 + ", ".join(known))
    write_tokenizer, vocab, special = tokenizer_for(args.arch, args.tokenizer, args.tokenizer_gguf)
    config = shrunk_config(args.arch, vocab, special)
    # Counted on the meta device first: a sub-config the rule missed would make gigabytes.
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    if params > MAX_PARAMETERS:
        sys.exit(f"tiny: the shrunk {args.arch} would have {params:,} parameters, over {MAX_PARAMETERS:,}: "
                 "a size the rule does not reach needs an override in tiny.py")
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomise(model, args.seed)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    write_tokenizer(args.out)
    params = sum(p.numel() for p in model.parameters())
    json.dump({"arch": args.arch, "seed": args.seed, "class": type(model).__name__, "parameters": params,
               "transformers": transformers.__version__,
               "tiny_py": hashlib.sha256(open(__file__, "rb").read()).hexdigest()[:12], "override": OVERRIDES.get(args.arch, (None, None))[1]},
              open(os.path.join(args.out, "llorch-tiny.json"), "w"), indent=2)
    print(f"tiny: {type(model).__name__}, {params:,} parameters, seed {args.seed}, into {args.out}")


if __name__ == "__main__":
    main()
