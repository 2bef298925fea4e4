"""Read an extractor run into NumPy arrays, and write a candidate directory.

Only the standard library and NumPy: copy this file into your engine's tests,
or put ``extractor/python`` on ``sys.path``.

    run = Run("checkpoints")                        # a run of the extractor
    ln1 = run.array("01_ln1_output")                # by checkpoint id (prompt pass; layer= where the run has several)
    ffn = run.array("06_ffn", layer=7)              # by id and layer (ids: manifests/gpt2.yaml)
    for cp in run.checkpoints(layer=7): ...         # every checkpoint of a layer
    write_candidate("out", run, {cp: my_engine(cp) for cp in run.checkpoints()})
    # then: cargo xtask compare --run checkpoints --candidate out

The file format (``.bin``, little-endian): ``i32 n_dims``, ``n_dims`` x ``i64``
dims (row-major, outermost first: ggml's ``ne`` reversed), then the f32 data,
row-major. ``.npy`` files are standard NumPy ``<f4``.
"""

import json
import os
import struct
import tempfile

import numpy as np

#: The ``run.json`` schema this module reads; another is refused by name.
SCHEMA_VERSION = 5

#: The most dimensions a ``.bin`` may declare (ggml has 4).
MAX_DIMS = 8


class Checkpoint:
    """One checkpoint file of a run, as ``run.json`` records it."""

    def __init__(self, record):
        self.id = record["id"]
        self.layer = record["layer"]
        self.step = record["step"]
        #: The ggml node's name (``attn_norm-0``).
        self.tensor = record["tensor"]
        self.op = record["op"]
        #: Row-major, outermost first.
        self.shape = tuple(record["shape"])
        self.file = record["file"]
        self.sha256 = record["sha256"]
        self.record = record

    def __repr__(self):
        layer = "" if self.layer is None else f"@{self.layer}"
        return f"Checkpoint({self.id}{layer}, step {self.step}, {self.tensor}, {list(self.shape)})"


class Run:
    """An extractor run directory: ``run.json`` and one file per checkpoint."""

    def __init__(self, path):
        self.path = os.fspath(path)
        record_path = os.path.join(self.path, "run.json")
        try:
            with open(record_path, encoding="utf-8") as f:
                self.record = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{record_path}: no run here; run `cargo xtask extract` (or the extractor) with --out {self.path}"
            ) from None
        version = self.record.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"{record_path}: run.json schema version {version}, this module reads {SCHEMA_VERSION}: "
                "use the module of the extractor that wrote the run, or extract again"
            )
        self._checkpoints = [Checkpoint(c) for c in self.record["checkpoints"]]

    @property
    def tokens(self):
        """The prompt's token ids, as llama.cpp ran them."""
        return list(self.record["tokens"])

    def checkpoints(self, id=None, layer=None, step=0):
        """The run's checkpoints in file order, narrowed by id, layer and pass
        (``step``: 0 is the prompt's; ``None`` for every pass)."""
        return [
            c
            for c in self._checkpoints
            if (id is None or c.id == id)
            and (layer is None or c.layer == layer)
            and (step is None or c.step == step)
        ]

    def checkpoint(self, id, layer=None, step=0):
        """The one checkpoint of that id (a node name works too), layer and pass."""
        found = self.checkpoints(id, layer, step) or [
            c for c in self.checkpoints(None, layer, step) if c.tensor == id
        ]
        if len(found) == 1:
            return found[0]
        if not found:
            known = sorted({c.id for c in self._checkpoints})
            raise KeyError(f"no checkpoint {id!r} (layer {layer}, step {step}) in {self.path}; ids: {known}")
        layers = sorted({c.layer for c in found}, key=lambda l: -1 if l is None else l)
        raise KeyError(f"checkpoint {id!r} is in several layers {layers}: name one with layer=")

    def array(self, id, layer=None, step=0):
        """The checkpoint's data as a float32 array of its shape."""
        c = id if isinstance(id, Checkpoint) else self.checkpoint(id, layer, step)
        return read_tensor(os.path.join(self.path, c.file))

    def by_layer(self, layer, step=0):
        """Every checkpoint of one layer, ``{id: array}``."""
        return {c.id: self.array(c) for c in self.checkpoints(layer=layer, step=step)}


def read_tensor(path):
    """A ``.bin`` or ``.npy`` checkpoint file, as a float32 array of its shape."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        return np.load(path).astype(np.float32, copy=False)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for a checkpoint header")
    (n_dims,) = struct.unpack_from("<i", data, 0)
    if not 0 <= n_dims <= MAX_DIMS:
        raise ValueError(f"{path}: {n_dims} dimensions (0 to {MAX_DIMS} allowed): not a checkpoint file")
    header = 4 + 8 * n_dims
    if len(data) < header:
        raise ValueError(f"{path}: header cut short")
    shape = struct.unpack_from(f"<{n_dims}q", data, 4)
    if any(d < 0 for d in shape):
        raise ValueError(f"{path}: negative dimension in {list(shape)}")
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != 4 * count:
        raise ValueError(
            f"{path}: shape {list(shape)} needs {4 * count} bytes of data, the file has {len(data) - header}"
        )
    return np.frombuffer(data, dtype="<f4", offset=header).reshape(shape).astype(np.float32)


def write_tensor(path, array):
    """Writes ``array`` as a checkpoint file: ``.npy`` by its name, else ``.bin``."""
    a = np.ascontiguousarray(array, dtype="<f4")
    path = os.fspath(path)
    if path.endswith(".npy"):
        np.save(path, a)
        return
    with open(path, "wb") as f:
        f.write(struct.pack("<i", a.ndim))
        f.write(struct.pack(f"<{a.ndim}q", *a.shape))
        f.write(a.tobytes())


def write_candidate(out, run, tensors, format="bin"):
    """Writes a candidate directory for ``cargo xtask compare --candidate``.

    ``tensors`` maps checkpoints (a :class:`Checkpoint`, or its id for a
    checkpoint of one layer) to arrays of the checkpoint's shape. The files
    take the run's names (with ``format``'s extension) and ``tokens.json``
    the run's token ids. The directory is filled beside ``out`` and renamed
    into place: ``out`` holds a whole candidate or what it held before.
    """
    if format not in ("bin", "npy"):
        raise ValueError(f"format {format!r}: bin or npy")
    out = os.fspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"{out} exists and is not an empty directory: name a new one")
    parent = os.path.dirname(os.path.abspath(out))
    staging = tempfile.mkdtemp(prefix=".candidate-", dir=parent)
    try:
        for key, array in tensors.items():
            c = key if isinstance(key, Checkpoint) else run.checkpoint(key)
            a = np.asarray(array)
            if a.shape != c.shape:
                raise ValueError(f"{c.id}: the array's shape {list(a.shape)} is not the checkpoint's {list(c.shape)}")
            stem = c.file.rsplit(".", 1)[0]
            write_tensor(os.path.join(staging, f"{stem}.{format}"), a)
        with open(os.path.join(staging, "tokens.json"), "w", encoding="utf-8") as f:
            json.dump(run.tokens, f)
        if os.path.isdir(out):
            os.rmdir(out)
        os.rename(staging, out)
    except BaseException:
        for name in os.listdir(staging):
            os.remove(os.path.join(staging, name))
        os.rmdir(staging)
        raise
