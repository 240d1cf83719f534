"""The Python `safetensors` library as an independent reference for grpo's safetensors I/O.

  safetensors_oracle.py write DIR
      Writes DIR/ref.safetensors with safetensors.torch.save_file (a fixed set of tensors of every
      dtype grpo supports, special values included, plus metadata) and DIR/ref.json describing it.
  safetensors_oracle.py read FILE EXPECTED_JSON
      Loads FILE with safetensors.torch.load_file (which validates the file strictly: contiguous
      offsets, no trailing bytes) and checks that its metadata and every tensor's dtype, shape,
      bytes and values equal EXPECTED_JSON's. Exits 1 with a message otherwise.

The JSON (written by this script for ref, by tests/io/test_safetensors.cpp for ours):
  {"metadata": {str: str}, "header_bytes": N,
   "tensors": [{"name", "dtype" (safetensors name), "shape", "data_offsets" (ref only),
                "values": flattened; float dtypes as float64 numbers or "nan"/"inf"/"-inf",
                          the others as exact integers,
                "hex": the raw little-endian bytes}]}
"""

import json
import math
import os
import struct
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}

NAN, INF = float("nan"), float("inf")


def reference_tensors():
    """Tensors whose values are exact in their dtype, so float64 values describe them exactly."""
    g = torch.Generator().manual_seed(1234)
    return {
        "f64": torch.tensor([[1 / 3, -2.5e-300, 1e300], [-0.0, INF, NAN]], dtype=torch.float64),
        "f32": torch.tensor([0.1, -1e-40, 3.4e38, -INF, NAN, -0.0], dtype=torch.float32).reshape(2, 3),
        "f32_random": torch.randn(16, 33, generator=g),
        "f16": torch.tensor([1 / 3, 6e-8, 65504.0, INF, -0.0, NAN], dtype=torch.float16),
        "bf16": torch.tensor([[1 / 3, -1e-39], [3.0e38, -INF]], dtype=torch.bfloat16),
        "i64": torch.tensor([-(2**53), 2**53, -1, 0], dtype=torch.int64),
        "i64_extremes": torch.tensor([-(2**63), 2**63 - 1], dtype=torch.int64),
        "i32": torch.tensor([-(2**31), 2**31 - 1, 7], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767, 0], dtype=torch.int16),
        "i8": torch.tensor([[-128, 127], [0, -1]], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 128], dtype=torch.uint8),
        "bool": torch.tensor([[True, False, True]]),
        "f8_e4m3": torch.tensor([448.0, -448.0, 2.0**-9, NAN, -0.0, 1.5]).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.tensor([57344.0, -INF, 2.0**-16, NAN, 0.75]).to(torch.float8_e5m2),
        "empty_f32": torch.zeros(0, 3),
        "empty_bf16": torch.zeros(2, 0, dtype=torch.bfloat16),
        "scalar_f64": torch.tensor(2.5, dtype=torch.float64),
        "scalar_i64": torch.tensor(-7, dtype=torch.int64),
        "model.layers.0.mlp.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    }


def encode_float(v):
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def values_of(t):
    """Floating dtypes as float64 values (specials as strings), the others as exact integers."""
    if t.dtype.is_floating_point:
        return [encode_float(v) for v in t.to(torch.float64).reshape(-1).tolist()]
    return t.to(torch.int64).reshape(-1).tolist()


def hex_of(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()


def same_value(a, b):
    """Exact equality; "nan" equals "nan"; -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def write(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "ref.safetensors")
    metadata = {"format": "pt", "source": "safetensors_oracle.py", "unicode": "grüße ✓"}
    tensors = reference_tensors()
    save_file(tensors, path, metadata=metadata)
    header_bytes, header = read_header(path)
    entries = []
    for name, entry in header.items():  # the header's own order
        if name == "__metadata__":
            continue
        t = tensors[name]
        assert DTYPE_NAMES[t.dtype] == entry["dtype"], (name, entry)
        entries.append({
            "name": name,
            "dtype": entry["dtype"],
            "shape": list(t.shape),
            "data_offsets": entry["data_offsets"],
            "values": values_of(t),
            "hex": hex_of(t),
        })
    with open(os.path.join(out_dir, "ref.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": metadata, "header_bytes": header_bytes, "tensors": entries}, f,
                  indent=1, ensure_ascii=False)
    print(f"wrote {path} ({len(entries)} tensors, header {header_bytes} bytes)")


def read(path, expected_json):
    with open(expected_json, encoding="utf-8") as f:
        expected = json.load(f)
    errors = []
    header_bytes, _ = read_header(path)
    if header_bytes % 8 != 0:
        errors.append(f"header length {header_bytes} is not a multiple of 8")
    loaded = load_file(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata != expected["metadata"]:
        errors.append(f"metadata: expected {expected['metadata']}, found {metadata}")
    names = [e["name"] for e in expected["tensors"]]
    if sorted(loaded) != sorted(names):
        errors.append(f"tensor names: expected {sorted(names)}, found {sorted(loaded)}")
    for e in expected["tensors"]:
        name = e["name"]
        if name not in loaded:
            continue
        t = loaded[name]
        where = f"tensor '{name}'"
        if DTYPE_NAMES.get(t.dtype) != e["dtype"]:
            errors.append(f"{where}: expected dtype {e['dtype']}, found {t.dtype}")
            continue
        if list(t.shape) != e["shape"]:
            errors.append(f"{where}: expected shape {e['shape']}, found {list(t.shape)}")
            continue
        if hex_of(t) != e["hex"]:
            errors.append(f"{where}: expected bytes {e['hex']}, found {hex_of(t)}")
        values = values_of(t)
        bad = [i for i, (a, b) in enumerate(zip(values, e["values"])) if not same_value(a, b)]
        if len(values) != len(e["values"]) or bad:
            i = bad[0] if bad else min(len(values), len(e["values"]))
            errors.append(f"{where}: values differ first at element {i}: expected "
                          f"{e['values'][i:i + 1]}, found {values[i:i + 1]}")
    if errors:
        print(f"{path}: {len(errors)} mismatches against {expected_json}:", file=sys.stderr)
        for line in errors:
            print("  " + line, file=sys.stderr)
        return 1
    print(f"{path}: {len(names)} tensors and metadata match {expected_json}")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "write":
        write(argv[2])
        return 0
    if len(argv) == 4 and argv[1] == "read":
        return read(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
