#!/usr/bin/python3
"""Splits DIR/model.safetensors into two shards plus model.safetensors.index.json
(the layout of large published checkpoints), removing the single file."""
import json
import os
import struct
import sys


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def write(path, entries):
    header, off, blobs = {}, 0, []
    for name, (meta, raw) in sorted(entries.items()):
        header[name] = {"dtype": meta["dtype"], "shape": meta["shape"], "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main(d):
    header, data = read(os.path.join(d, "model.safetensors"))
    header.pop("__metadata__", None)
    names = sorted(header)
    shards = [{}, {}]
    for i, n in enumerate(names):
        b, e = header[n]["data_offsets"]
        shards[0 if i < len(names) // 2 else 1][n] = (header[n], data[b:e])
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for f, s in zip(files, shards):
        write(os.path.join(d, f), s)
        weight_map.update({n: f for n in s})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": len(data)}, "weight_map": weight_map}, f)
    os.remove(os.path.join(d, "model.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
