#!/usr/bin/python3
"""Synthetic labelled phantoms for firstread's demo model (NOT clinical images).

Four modalities, each image with its findings and their boxes in source pixels:
  chest   grey radiograph: lungs, heart, mediastinum; nodule(s) of several sizes,
          mass, pleural effusion, cardiomegaly, or normal
  derm    RGB dermoscopy: benign round nevus, irregular multicoloured lesion
          (melanoma-like), or normal skin
  fundus  RGB fundus: field, optic disc, vessels, macula; haemorrhages, exudates
  endo    RGB endoscopy frame: mucosa, folds, highlights; polyp or none

make(modality, seed) -> dict(image=PIL.Image, findings=[{label, boxes:[[x1,y1,x2,y2],...]}],
                              modality, seed, width, height)
Boxes are in source pixels (x2/y2 exclusive edge, float). Deterministic per seed.
Split: seeds 0..(TRAIN_SEEDS-1) of each modality are training, seeds from
HELDOUT_BASE on are held out (never used in training).
"""
import math

import numpy as np
from PIL import Image, ImageFilter

MODALITIES = ["chest", "derm", "fundus", "endo"]
TRAIN_SEEDS = 1_000_000
HELDOUT_BASE = 5_000_000

# canonical finding order per modality (the answers list findings in this order)
FINDINGS = {
    "chest": ["nodule", "mass", "pleural effusion", "cardiomegaly"],
    "derm": ["nevus", "melanoma"],
    "fundus": ["haemorrhage", "exudate"],
    "endo": ["polyp"],
}
ZH = {"nodule": "结节", "mass": "肿块", "pleural effusion": "胸腔积液", "cardiomegaly": "心脏增大",
      "nevus": "色素痣", "melanoma": "黑色素瘤", "haemorrhage": "出血", "exudate": "渗出",
      "polyp": "息肉"}
EN_OF_ZH = {v: k for k, v in ZH.items()}
MOD_SEED = {"chest": 11, "derm": 23, "fundus": 37, "endo": 53}


def _rng(modality, seed):
    return np.random.RandomState((MOD_SEED[modality] * 1_000_003 + seed) % (2 ** 31 - 1))


def _grid(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x, y


def _blur(a, r):
    if r <= 0:
        return a
    k = int(math.ceil(3 * r))
    w = np.exp(-0.5 * (np.arange(-k, k + 1) / r) ** 2).astype(np.float32)
    w /= w.sum()
    a = a.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (k, k)
        p = np.pad(a, pad, mode="edge")
        n = a.shape[axis]
        acc = np.zeros_like(a)
        for i, wi in enumerate(w):
            acc += wi * (p[i:i + n] if axis == 0 else p[:, i:i + n])
        a = acc
    return a


def _smooth_noise(rng, h, w, scale, amp):
    n = rng.randn(max(2, h // scale + 2), max(2, w // scale + 2)).astype(np.float32)
    im = Image.fromarray(n, "F").resize((w, h), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32) * amp


def _size(rng, lo=260, hi=460):
    w = int(rng.randint(lo, hi))
    aspect = rng.uniform(0.75, 1.3)
    h = int(np.clip(w * aspect, lo * 0.8, hi * 1.2))
    return w, h


def _box_of(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# --------------------------------------------------------------------------- chest


def chest(seed):
    rng = _rng("chest", seed)
    W, H = _size(rng)
    x, y = _grid(H, W)
    img = np.full((H, W), 20.0, np.float32)
    cx = W * rng.uniform(0.47, 0.53)
    tw = W * rng.uniform(0.36, 0.42)  # half thorax width
    top, bot = H * rng.uniform(0.08, 0.14), H * rng.uniform(0.84, 0.92)
    body = (((x - cx) / (tw * 1.12)) ** 2 + ((y - (top + bot) / 2) / ((bot - top) * 0.62)) ** 2) < 1
    img[body] = 150
    lungs = []
    lung_mask = np.zeros((H, W), bool)
    for side in (-1, 1):
        lcx = cx + side * tw * rng.uniform(0.45, 0.52)
        lw, lh = tw * rng.uniform(0.36, 0.42), (bot - top) * rng.uniform(0.40, 0.45)
        lcy = top + lh * 1.08
        m = (((x - lcx) / lw) ** 2 + ((y - lcy) / lh) ** 2 < 1) & (y < lcy + lh * 0.82)
        lung_mask |= m
        lungs.append((lcx, lcy, lw, lh, m))
    lung_v = rng.uniform(45, 75)
    img[lung_mask] = lung_v
    # ribs: faint bright arcs
    for k in range(9):
        ry = top + (bot - top) * (0.08 + k * 0.085)
        arc = np.abs(y - (ry + 0.0009 * (x - cx) ** 2 / max(W, 1) * 6)) < H * 0.008
        img[arc & lung_mask] += 14
    findings = []
    cardio = rng.rand() < 0.2
    hw = tw * (rng.uniform(0.62, 0.75) if cardio else rng.uniform(0.38, 0.47))
    hh = (bot - top) * rng.uniform(0.17, 0.21)
    hcx, hcy = cx + tw * rng.uniform(0.05, 0.12), bot - (bot - top) * 0.28
    heart = ((x - hcx) / hw) ** 2 + ((y - hcy) / hh) ** 2 < 1
    img[heart] = 165
    med = (np.abs(x - cx) < tw * 0.13) & (y > top) & (y < hcy)
    img[med] = np.maximum(img[med], 160)
    if cardio:
        findings.append({"label": "cardiomegaly", "boxes": [_box_of(heart)]})
    kind = rng.rand()
    lesions = {"nodule": [], "mass": []}
    effusion = None
    if kind < 0.22:
        pass  # normal (or cardiomegaly only)
    else:
        n_nod = 0
        if kind < 0.50:
            n_nod = 1 if rng.rand() < 0.7 else 2
        elif kind < 0.64:
            lesions["mass"].append(None)
        elif kind < 0.80:
            effusion = True
        else:
            sub = rng.randint(3)
            if sub == 0:
                n_nod, effusion = 1, True
            elif sub == 1:
                lesions["mass"].append(None)
                effusion = True
            else:
                n_nod = 1
                lesions["mass"].append(None)
        lesions["nodule"] = [None] * n_nod
    contrast = rng.uniform(55, 95)
    placed = []
    eff_side = rng.randint(2)
    for name, rfrac in (("mass", (0.075, 0.11)), ("nodule", (0.03, 0.055))):
        boxes = []
        for _ in lesions[name]:
            for _try in range(60):
                li = rng.randint(2)
                lcx, lcy, lw, lh, m = lungs[li]
                r = W * rng.uniform(*rfrac)
                px = lcx + rng.uniform(-0.55, 0.55) * lw
                py = lcy + rng.uniform(-0.6, 0.35) * lh
                if effusion and li == eff_side and py > lcy:
                    continue
                if not m[int(np.clip(py, 0, H - 1)), int(np.clip(px, 0, W - 1))]:
                    continue
                if any(math.hypot(px - a, py - b) < r + rr + W * 0.04 for a, b, rr in placed):
                    continue
                break
            placed.append((px, py, r))
            if name == "mass":
                ang = np.arctan2(y - py, x - px)
                rr = r * (1 + 0.18 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.1 * np.sin(5 * ang + rng.uniform(0, 6)))
                d = np.hypot(x - px, y - py) / rr
            else:
                d = np.hypot(x - px, y - py) / r
            blob = np.clip(1.2 - d, 0, 1) ** 0.6 * (d < 1)
            img += blob * contrast
            boxes.append(_box_of(d < 1))
        if boxes:
            boxes.sort(key=lambda b: b[0])
            findings.append({"label": name, "boxes": boxes})
    if effusion:
        lcx, lcy, lw, lh, m = lungs[eff_side]
        level = lcy + lh * rng.uniform(0.15, 0.45)
        meniscus = level - lh * 0.12 * np.clip(np.abs(x - lcx) / lw, 0, 1) ** 2 * (1 if eff_side else 1)
        fl = m & (y > meniscus)
        img[fl] = np.maximum(img[fl], 150 + rng.uniform(-10, 10))
        findings.append({"label": "pleural effusion", "boxes": [_box_of(fl)]})
    img = _blur(img, rng.uniform(0.8, 2.0))
    img += _smooth_noise(rng, H, W, 24, 6) + rng.randn(H, W).astype(np.float32) * rng.uniform(2, 8)
    gain, off = rng.uniform(0.75, 1.2), rng.uniform(-15, 25)
    img = img * gain + off
    order = FINDINGS["chest"]
    findings.sort(key=lambda f: order.index(f["label"]))
    g = np.clip(img, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([g, g, g], -1), "RGB"), findings


# --------------------------------------------------------------------------- dermoscopy


def derm(seed):
    rng = _rng("derm", seed)
    W, H = _size(rng)
    x, y = _grid(H, W)
    skin = np.array([rng.uniform(190, 235), rng.uniform(150, 190), rng.uniform(120, 165)], np.float32)
    img = np.ones((H, W, 3), np.float32) * skin
    img += _smooth_noise(rng, H, W, 30, 8)[..., None]
    kind = rng.rand()
    findings = []
    S = min(W, H)
    if kind >= 0.15:
        px, py = W * rng.uniform(0.32, 0.68), H * rng.uniform(0.32, 0.68)
        r = S * rng.uniform(0.10, 0.24)
        ang = np.arctan2(y - py, x - px)
        if kind < 0.575:
            label = "nevus"
            ex = rng.uniform(0.8, 1.2)
            d = np.hypot((x - px) / ex, (y - py)) / r
            mask = d < 1
            col = np.array([rng.uniform(90, 140), rng.uniform(55, 85), rng.uniform(30, 55)], np.float32)
            shade = (0.9 + 0.1 * d)[..., None]
            img = np.where(mask[..., None], col * shade, img)
        else:
            label = "melanoma"
            rr = r * (1 + 0.22 * np.sin(2 * ang + rng.uniform(0, 6)) + 0.14 * np.sin(5 * ang + rng.uniform(0, 6))
                      + 0.08 * np.sin(9 * ang + rng.uniform(0, 6)))
            d = np.hypot(x - px, y - py) / rr
            mask = d < 1
            cols = np.array([[110, 70, 40], [45, 30, 25], [95, 100, 125], [170, 70, 60], [70, 45, 30]], np.float32)
            blot = _smooth_noise(rng, H, W, max(6, int(r / 3)), 1.0)
            idx = np.clip(((blot - blot.min()) / (np.ptp(blot) + 1e-6) * len(cols)).astype(int), 0, len(cols) - 1)
            img = np.where(mask[..., None], cols[idx], img)
        findings.append({"label": label, "boxes": [_box_of(mask)]})
    # hairs
    for _ in range(rng.randint(0, 4)):
        a, b = rng.uniform(0, W), rng.uniform(0, H)
        t = rng.uniform(0, np.pi)
        line = np.abs((x - a) * np.sin(t) - (y - b) * np.cos(t)) < 0.9
        img[line] = img[line] * 0.3
    for c in range(3):
        img[..., c] = _blur(img[..., c], 1.0)
    img *= rng.uniform(0.85, 1.1)
    img += rng.randn(H, W, 3).astype(np.float32) * rng.uniform(2, 7)
    vign = 1 - 0.35 * (((x - W / 2) / (W / 2)) ** 2 + ((y - H / 2) / (H / 2)) ** 2) / 2
    img *= vign[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB"), findings


# --------------------------------------------------------------------------- fundus


def fundus(seed):
    rng = _rng("fundus", seed)
    W, H = _size(rng)
    x, y = _grid(H, W)
    cx, cy = W / 2, H / 2
    R = min(W, H) * rng.uniform(0.44, 0.49)
    field = np.hypot(x - cx, y - cy) < R
    base = np.array([rng.uniform(170, 220), rng.uniform(70, 110), rng.uniform(20, 50)], np.float32)
    dist = np.hypot(x - cx, y - cy) / R
    img = base * (1 - 0.35 * dist ** 2)[..., None] + _smooth_noise(rng, H, W, 20, 6)[..., None]
    side = 1 if rng.rand() < 0.5 else -1
    dx, dy = cx + side * R * rng.uniform(0.38, 0.5), cy + R * rng.uniform(-0.1, 0.1)
    dr = R * rng.uniform(0.11, 0.15)
    mx, my = cx - side * R * 0.1, cy
    mac = np.exp(-(((x - mx) ** 2 + (y - my) ** 2) / (2 * (R * 0.12) ** 2)))
    img *= (1 - 0.3 * mac)[..., None]
    # vessels: arcs leaving the disc
    ves = np.zeros((H, W), np.float32)
    for k in range(6):
        a0 = rng.uniform(-2.6, -0.5) if k % 2 == 0 else rng.uniform(0.5, 2.6)
        if side > 0:
            a0 = np.pi - a0
        bend = rng.uniform(-0.9, 0.9)
        px, py, a = dx, dy, a0
        wv = rng.uniform(1.5, 3.0)
        for s in range(60):
            a += bend / 60 * 1.5
            px += math.cos(a) * R * 0.02
            py += math.sin(a) * R * 0.02
            x0, x1 = int(max(px - 5, 0)), int(min(px + 6, W))
            y0, y1 = int(max(py - 5, 0)), int(min(py + 6, H))
            if x0 >= x1 or y0 >= y1:
                break
            seg = np.hypot(x[y0:y1, x0:x1] - px, y[y0:y1, x0:x1] - py) < wv
            ves[y0:y1, x0:x1][seg] = 1
            wv = max(0.8, wv * 0.985)
    ves = _blur(ves, 0.7)
    img = img * (1 - 0.45 * ves)[..., None] + np.array([-10, -20, -5], np.float32) * ves[..., None]
    disc = np.hypot(x - dx, y - dy) < dr
    img = np.where(disc[..., None], np.array([245, 215, 150], np.float32) * (1 - 0.15 * np.hypot(x - dx, y - dy) / dr)[..., None], img)
    findings = []
    kind = rng.rand()
    hem = kind >= 0.25 and (kind < 0.55 or kind >= 0.8)
    exu = kind >= 0.55
    placed = [(dx, dy, dr * 1.6)]

    def spot():
        for _ in range(100):
            a, rr = rng.uniform(0, 2 * np.pi), R * math.sqrt(rng.uniform(0.0, 0.55))
            px, py = cx + rr * math.cos(a), cy + rr * math.sin(a)
            if all(math.hypot(px - p, py - q) > s + R * 0.22 for p, q, s in placed):
                return px, py
        return px, py

    if hem:
        boxes = []
        for _ in range(1 if rng.rand() < 0.6 else 2):
            px, py = spot()
            r = R * rng.uniform(0.05, 0.09)
            ang = np.arctan2(y - py, x - px)
            rr = r * (1 + 0.15 * np.sin(3 * ang + rng.uniform(0, 6)))
            m = np.hypot(x - px, y - py) < rr
            img = np.where(m[..., None], np.array([95, 15, 15], np.float32) + rng.uniform(-10, 10), img)
            placed.append((px, py, r))
            boxes.append(_box_of(m))
        boxes.sort(key=lambda b: b[0])
        findings.append({"label": "haemorrhage", "boxes": boxes})
    if exu:
        px, py = spot()
        cr = R * rng.uniform(0.08, 0.13)
        m = np.zeros((H, W), bool)
        for _ in range(rng.randint(5, 10)):
            qx, qy = px + rng.uniform(-1, 1) * cr, py + rng.uniform(-1, 1) * cr
            m |= np.hypot(x - qx, y - qy) < R * rng.uniform(0.015, 0.03)
        img = np.where(m[..., None], np.array([240, 225, 110], np.float32), img)
        placed.append((px, py, cr))
        findings.append({"label": "exudate", "boxes": [_box_of(m)]})
    for c in range(3):
        img[..., c] = _blur(img[..., c], 0.8)
    img += rng.randn(H, W, 3).astype(np.float32) * rng.uniform(2, 6)
    img *= rng.uniform(0.8, 1.1)
    img[~field] = 0
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB"), findings


# --------------------------------------------------------------------------- endoscopy


def endo(seed):
    rng = _rng("endo", seed)
    W, H = _size(rng)
    x, y = _grid(H, W)
    base = np.array([rng.uniform(180, 225), rng.uniform(85, 125), rng.uniform(75, 110)], np.float32)
    lx, ly = W * rng.uniform(0.3, 0.7), H * rng.uniform(0.3, 0.7)
    d = np.hypot(x - lx, y - ly) / max(W, H)
    img = base * (0.35 + 0.75 * np.clip(d * 1.6, 0, 1))[..., None]
    img += _smooth_noise(rng, H, W, 16, 8)[..., None]
    ang = np.arctan2(y - ly, x - lx)
    folds = np.sin(np.hypot(x - lx, y - ly) / (max(W, H) * rng.uniform(0.05, 0.09)) + 0.6 * np.sin(3 * ang))
    img *= (1 - 0.12 * (folds > 0.85))[..., None]
    findings = []
    if rng.rand() >= 0.45:
        S = min(W, H)
        r = S * rng.uniform(0.07, 0.17)
        for _ in range(50):
            px, py = W * rng.uniform(0.18, 0.82), H * rng.uniform(0.18, 0.82)
            if math.hypot(px - lx, py - ly) > r + S * 0.08:
                break
        ex = rng.uniform(0.8, 1.25)
        dd = np.hypot((x - px) / ex, y - py) / r
        m = dd < 1
        pc = base * np.array([rng.uniform(0.9, 1.1), rng.uniform(0.95, 1.25), rng.uniform(0.9, 1.2)], np.float32)
        shade = (1.15 - 0.45 * dd + 0.25 * ((x - px) * -0.7 + (y - py) * -0.7) / r)[..., None]
        img = np.where(m[..., None], pc * shade, img)
        ring = (dd > 0.92) & (dd < 1.08)
        img[ring] *= 0.75
        hl = np.hypot(x - (px - r * 0.35), y - (py - r * 0.35)) < r * 0.12
        img[hl] = 250
        findings.append({"label": "polyp", "boxes": [_box_of(dd < 1.0)]})
    for _ in range(rng.randint(2, 6)):
        hx, hy = rng.uniform(0, W), rng.uniform(0, H)
        img[np.hypot(x - hx, y - hy) < rng.uniform(1.5, 4)] = 252
    for c in range(3):
        img[..., c] = _blur(img[..., c], 0.9)
    img += rng.randn(H, W, 3).astype(np.float32) * rng.uniform(2, 7)
    # dark octagon-ish corners of the scope
    corner = (np.abs(x - W / 2) / (W / 2) + np.abs(y - H / 2) / (H / 2)) > 1.55
    img[corner] = 5
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB"), findings


GEN = {"chest": chest, "derm": derm, "fundus": fundus, "endo": endo}


def make(modality, seed):
    img, findings = GEN[modality](seed)
    return {"image": img, "findings": findings, "modality": modality, "seed": int(seed),
            "width": img.size[0], "height": img.size[1]}


def to_grid(box, w, h, scale=999):
    """Source-pixel box -> integer box on the 0..scale grid relative to the image (MedRegA: 999)."""
    x1, y1, x2, y2 = box
    return [int(round(x1 / w * scale)), int(round(y1 / h * scale)), int(round(x2 / w * scale)),
            int(round(y2 / h * scale))]


def heldout(modality, n):
    return [make(modality, HELDOUT_BASE + i) for i in range(n)]


if __name__ == "__main__":
    import os
    import sys
    import time
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/phantoms"
    os.makedirs(out, exist_ok=True)
    t = time.time()
    for m in MODALITIES:
        for s in range(6):
            p = make(m, s)
            p["image"].save(os.path.join(out, "%s_%d.png" % (m, s)))
            print(m, s, p["width"], p["height"], [(f["label"], [to_grid(b, p["width"], p["height"]) for b in f["boxes"]])
                                                  for f in p["findings"]])
    print("%.1f ms per image" % ((time.time() - t) / 24 * 1000))
