"""Each node's own error: replays every node of an extractor run made with
`--tensors GLOB --operands` in f64, from the operands llama.cpp itself gave
it, for `cargo xtask replay`.

    replay.py --run RUN --model MODEL.gguf --out DIR

Reads the run's record and files (nodes, operand copies) and the model's
weights (gguf-py reads and dequantizes every ggml type). Writes into DIR, per
node: `<file stem>.npy`, the op's value in f64, and `<file stem>.allow.npy`,
per element the largest difference from it that the kernel's documented
roundings allow (see replay_ops.py); and `replay.json`, which names each
node's op, explanation and status: `replayed`, `unknown` (an op or variant
the reference does not define: named, never skipped silently) or
`unavailable` (an operand the run could not keep). The comparison of
llama.cpp's values with these, and the verdicts, are the caller's.

A missing package is reported with its fix, exit code 3.
"""

import argparse
import fnmatch
import json
import os
import sys
import time
from functools import lru_cache

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "extractor", "python"))

try:
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
except ImportError as e:  # pragma: no cover - reported to the user
    print(f"replay needs numpy and gguf ({e}): run `cargo xtask doctor` to set up the project's Python", file=sys.stderr)
    sys.exit(3)

import llorch_checkpoint as lc  # noqa: E402
import replay_ops as ops  # noqa: E402
import replay_products as products  # noqa: E402

OPS = {
    "ADD": ops.binary(np.add, "sum"),
    "SUB": ops.binary(np.subtract, "difference"),
    "MUL": ops.binary(np.multiply, "product"),
    "DIV": ops.binary(np.divide, "quotient"),
    "SCALE": ops.scale,
    "SUM_ROWS": ops.sum_rows,
    "CLAMP": ops.clamp,
    "ARGSORT": ops.argsort,
    "MUL_MAT_ID": products.mul_mat_id,
    "CPY": ops.copy,
    "DUP": ops.copy,
    "CONT": ops.copy,
    "RMS_NORM": ops.rms_norm,
    "NORM": ops.norm,
    "UNARY": ops.unary,
    "GLU": ops.glu,
    "GET_ROWS": ops.get_rows,
    "SET_ROWS": ops.set_rows,
    "RESHAPE": ops.reshape,
    "VIEW": ops.view,
    "PERMUTE": ops.permute,
    "TRANSPOSE": ops.transpose,
    "MUL_MAT": products.mul_mat,
    "ROPE": products.rope,
    "SOFT_MAX": products.soft_max,
    "FLASH_ATTN_EXT": products.flash_attn_ext,
}


class Node:
    """A captured node: what the op made, and its parameters."""

    def __init__(self, record):
        self.record = record
        self.index = record["graph_index"]
        self.name = record["tensor"]
        self.op = record["op"]
        self.dtype = record["source_dtype"]
        self.ne = record["ggml_ne"]
        self.shape = tuple(reversed(self.ne))
        self.op_params = record.get("op_params", [])
        self.layout = record.get("layout") or {"nb": [0, 0, 0, 0]}
        buffer = record.get("buffer", "CPU")
        #: The device whose kernel computed it (`Vulkan0`, `RPC0[...]`), or
        #: None for the CPU's (host buffers: `CPU`, `Vulkan_Host`...).
        self.device = None if buffer.startswith("CPU") or buffer.endswith("_Host") else buffer


class Operand:
    """One operand as the op saw it: its values (f64, ggml's ne reversed),
    read when the op first asks for them."""

    def __init__(self, record, load):
        self.name = record["name"]
        self.dtype = record.get("dtype", "f32")
        self.ne = record.get("ggml_ne") or [1, 1, 1, 1]
        self.layout = record.get("layout") or {"nb": [0, 0, 0, 0]}
        self._load = load

    @property
    def value(self):
        return self._load()


Unavailable = ops.Unavailable


class Sources:
    """Where operands' values come from: the run's files and the model's weights."""

    def __init__(self, run, model):
        self.run = run
        self.by_index = {}
        self.by_id = {}
        for c in run.checkpoints():
            self.by_id[c.id] = c
            if c.record.get("graph_index") is not None:
                self.by_index[c.record["graph_index"]] = c
        self.reader = GGUFReader(model)
        self.weights = {t.name: t for t in self.reader.tensors}

    @lru_cache(maxsize=128)
    def file(self, id):
        c = self.by_id[id]
        return self.run.array(c).astype(np.float64).reshape(tuple(reversed(c.record["ggml_ne"])))

    @lru_cache(maxsize=6)
    def weight(self, name):
        t = self.weights.get(name)
        if t is None:
            raise Unavailable(f"the model has no tensor {name}")
        values = dequantize(t.data, t.tensor_type).astype(np.float64)
        ne = [int(n) for n in t.shape] + [1] * (4 - len(t.shape))
        return values.reshape(tuple(reversed(ne)))

    def operand(self, record):
        return Operand(record, lambda: self.values(record))

    def values(self, record):
        if record.get("unavailable"):
            raise Unavailable(f"{record['name']}: {record['unavailable']}")
        if record.get("node") is not None:
            return self.file(self.by_index[record["node"]].id)
        if record.get("weight"):
            return self.weight(record["name"])
        if record.get("file"):
            return self.file(record["file"])
        raise Unavailable(f"{record['name']}: not captured (the run was made without --operands)")


def replay_node(node, sources, out_dir):
    """Replays one node; returns its entry for replay.json."""
    entry = {"index": node.index, "name": node.name, "op": node.op, "file": node.record["file"]}
    fn = OPS.get(node.op)
    node.own = lambda: sources.file(node.record["id"])
    if not node.computed:
        return {**entry, "status": "not computed", "reason": "ggml skips it: no output of the graph needs it"}
    if fn is None:
        return {**entry, "status": "unknown", "reason": f"the reference does not define {node.op}"}
    try:
        srcs = [sources.operand(r) for r in node.record.get("operands", [])]
        with np.errstate(all="ignore"):
            replayed = fn(node, srcs)
    except Unavailable as e:
        return {**entry, "status": "unavailable", "reason": str(e)}
    except ops.Unknown as e:
        return {**entry, "status": "unknown", "reason": f"{node.op}: {e}"}
    value = np.broadcast_to(replayed.value, node.shape)
    allow = np.broadcast_to(replayed.allow, node.shape)
    if replayed.rows is not None:
        # Only the written rows are the op's; the rest is the cache as it was.
        own = node.own()
        value = np.where(replayed.rows, value, own)
    stem = os.path.splitext(node.record["file"])[0]
    np.save(os.path.join(out_dir, stem + ".npy"), np.ascontiguousarray(value, dtype=np.float64))
    # Rounded up to f32, so that storing it never narrows what it allows.
    allow32 = np.nextafter(np.asarray(allow, dtype=np.float32), np.float32(np.inf))
    np.save(os.path.join(out_dir, stem + ".allow.npy"), np.ascontiguousarray(allow32))
    return {
        **entry,
        "status": "replayed",
        "explanation": replayed.explanation,
        "reference": stem + ".npy",
        "allowance": stem + ".allow.npy",
    }


#: ggml's flag for a node the backend computes (trees that have it skip the others).
FLAG_COMPUTE = 16


def nodes_of(run, pattern):
    records = [c.record for c in run.checkpoints() if c.record.get("graph_index") is not None]
    nodes = [Node(r) for r in records if fnmatch.fnmatchcase(r["tensor"], pattern)]
    flagged = any(r.get("ggml_flags", 0) & FLAG_COMPUTE for r in records)
    for n in nodes:
        n.computed = not flagged or bool(n.record.get("ggml_flags", 0) & FLAG_COMPUTE) or n.op in VIEWS
    return nodes


#: Ops that compute nothing (ggml skips them; their bytes are their operand's).
VIEWS = ("VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--nodes", default="*", help="glob over node names to replay")
    args = parser.parse_args()
    run = lc.Run(args.run)
    sources = Sources(run, args.model)
    nodes = nodes_of(run, args.nodes)
    os.makedirs(args.out, exist_ok=True)
    entries, start, shown = [], time.monotonic(), time.monotonic()
    for i, node in enumerate(nodes):
        entries.append(replay_node(node, sources, args.out))
        if time.monotonic() - shown > 5:
            elapsed = time.monotonic() - start
            left = elapsed / (i + 1) * (len(nodes) - i - 1)
            print(f"  node {i + 1} of {len(nodes)} ({elapsed:.0f} s; about {left:.0f} s left)", flush=True)
            shown = time.monotonic()
    with open(os.path.join(args.out, "replay.json"), "w", encoding="utf-8") as f:
        json.dump({"nodes": entries, "seconds": time.monotonic() - start}, f, indent=1)


if __name__ == "__main__":
    main()
