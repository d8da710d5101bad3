#!/usr/bin/python3
"""Scores the auxiliary dense-detector head (not exported) on held-out phantoms:
finding-set exact match and mean IoU of the boxes it reads out of the image
tokens. An upper bound of what the decoder can copy; used while developing.
Usage: eval_aux.py WORK_DIR CKPT HELD_CACHE_PREFIX"""
import json
import os
import sys

import numpy as np
import torch

import train as T

torch.set_grad_enabled(False)
torch.set_num_threads(1)
work, ckp, held = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = json.load(open(os.path.join(work, "config.json")))
model = T.R.InternVLChat(cfg)
ck = torch.load(ckp)
model.load_state_dict(ck["model"])
S, P = cfg["force_image_size"], cfg["vision_config"]["patch_size"]
aux = T.AuxHead(cfg["llm_config"]["hidden_size"], T.token_centres(S // P, cfg.get("ps_version", "v1")), S // P)
aux.load_state_dict(ck["aux"])
imgs = np.load(held + ".npy")
metas = json.load(open(held + ".json"))
if imgs.shape[1] != S:
    from PIL import Image
    imgs = np.stack([np.asarray(Image.fromarray(a).resize((S, S), Image.BICUBIC)) for a in imgs])
tok = T.vision_tokens(model, T.to_pixels(imgs), cfg, S // P)
o = aux.fc(tok).view(tok.shape[0], tok.shape[1], T.NL, T.NAUX)


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / u if u > 0 else 0


st = {}
for i, m in enumerate(metas):
    pred = {}
    for t in range(tok.shape[1]):
        for li in range(T.NL):
            if torch.sigmoid(o[i, t, li, 0]) > 0.5:
                d = o[i, t, li, T.DIG0:].view(4, 3, 10).argmax(-1)
                b = (d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]).tolist()
                pred.setdefault(T.LABELS[li], []).append(b)
    truth = {f["label"]: f["boxes"] for f in m["findings"]}
    s = st.setdefault(m["modality"], [0, 0, 0.0, 0])
    s[0] += 1
    s[1] += set(pred) == set(truth)
    for lab, tb in truth.items():
        pb = list(pred.get(lab, []))
        pairs = sorted(((iou(a, b), i, j) for i, a in enumerate(tb) for j, b in enumerate(pb)), reverse=True)
        ut, up = set(), set()
        for v, i_, j in pairs:
            if i_ in ut or j in up:
                continue
            ut.add(i_)
            up.add(j)
            s[2] += v
            s[3] += 1
for k, s in st.items():
    print("%-7s n=%d set-exact %.1f%% meanIoU %.3f (%d)" % (k, s[0], 100 * s[1] / s[0], s[2] / max(1, s[3]), s[3]))
