#!/usr/bin/python3
"""Pre-renders training phantoms at the model's input size (PIL BICUBIC to 224x224,
what the engine's preprocessing does with pad2square off) plus their findings
on the 0..999 grid. Usage: make_cache.py OUT_PREFIX N_PER_MODALITY [SIZE] [FIRST_SEED]"""
import json
import sys

import numpy as np
from PIL import Image

import phantoms

out, n = sys.argv[1], int(sys.argv[2])
size = int(sys.argv[3]) if len(sys.argv) > 3 else 224
start = int(sys.argv[4]) if len(sys.argv) > 4 else 0
imgs, meta = [], []
for i in range(start, start + n):
    for m in phantoms.MODALITIES:
        p = phantoms.make(m, i)
        imgs.append(np.asarray(p["image"].convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.uint8))
        meta.append({"modality": m, "seed": i, "findings": [
            {"label": f["label"], "boxes": [phantoms.to_grid(b, p["width"], p["height"]) for b in f["boxes"]]}
            for f in p["findings"]]})
    if (i + 1 - start) % 50 == 0:
        np.save(out + ".part.npy", np.stack(imgs))
        json.dump(meta, open(out + ".part.json", "w"))
        print(i + 1, flush=True)
np.save(out + ".npy", np.stack(imgs))
json.dump(meta, open(out + ".json", "w"))
print("done", flush=True)
