#!/usr/bin/python3
"""Splits DIR/model.safetensors into N shards plus model.safetensors.index.json
(the layout of large published checkpoints: model-0000k-of-0000N.safetensors,
tensors in name order, a new shard whenever the current one reaches 1/N of the
bytes, so the tensors of a layer fall into two shards at every boundary), and
removes the single file. Streams tensor by tensor: never holds the model.

Usage: shard.py DIR [N]   (N = 2 by default)
"""
import json
import os
import struct
import sys


def read_header(f):
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    return header, 8 + n


def main(d, n_shards=2):
    src_path = os.path.join(d, "model.safetensors")
    with open(src_path, "rb") as src:
        header, base = read_header(src)
        header.pop("__metadata__", None)
        names = sorted(header)
        total = sum(header[n]["data_offsets"][1] - header[n]["data_offsets"][0] for n in names)
        groups, cur, size = [], [], 0
        for n in names:
            b, e = header[n]["data_offsets"]
            cur.append(n)
            size += e - b
            if size >= total * (len(groups) + 1) / n_shards and len(groups) < n_shards - 1:
                groups.append(cur)
                cur = []
        groups.append(cur)
        while len(groups) < n_shards:
            groups.append([])
        files = ["model-%05d-of-%05d.safetensors" % (i + 1, n_shards) for i in range(n_shards)]
        weight_map = {}
        for f, group in zip(files, groups):
            out_header, off = {}, 0
            for n in group:
                b, e = header[n]["data_offsets"]
                out_header[n] = {"dtype": header[n]["dtype"], "shape": header[n]["shape"],
                                 "data_offsets": [off, off + e - b]}
                off += e - b
            h = json.dumps(out_header).encode()
            h += b" " * ((8 - len(h) % 8) % 8)
            with open(os.path.join(d, f), "wb") as out:
                out.write(struct.pack("<Q", len(h)) + h)
                for n in group:
                    b, e = header[n]["data_offsets"]
                    src.seek(base + b)
                    left = e - b
                    while left > 0:
                        chunk = src.read(min(left, 64 << 20))
                        out.write(chunk)
                        left -= len(chunk)
            weight_map.update({n: f for n in group})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    os.remove(src_path)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
