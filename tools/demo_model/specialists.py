#!/usr/bin/python3
"""The demo's GSCo specialists: one small ViT classifier per modality, trained
on the synthetic phantoms, saved in the Hugging Face ViTForImageClassification
layout (hf_vit.py), multi-label (sigmoid), temperature-calibrated; plus the
case library (training phantoms as PNG + labels.csv) and the MoED / RAD
annotations the generalist's GSCo step is trained on.

Subcommands (each prints what it did; see TRAINING.md for the recipe):
  render OUT --seeds A:B [--modalities chest,...] [--sizes 112,224] [--png DIR]
      phantoms of those seeds resized (PIL bicubic, as the engine) to each size:
      OUT.<modality>.<size>.npy + OUT.<modality>.json (labels, boxes on 0..999);
      --png DIR also writes the images at the first size (the specialist's input
      size, so the library holds exactly what the specialist was trained on) as
      DIR/<modality>/<seed>.png with DIR/<modality>/labels.csv (the case library
      `firstread cases import` takes; a phantom without findings is `normal`).
  train OUT_DIR --modality M --data P1,P2 --minutes N [--size 112 --patch 8 ...]
      trains one specialist (classification on CLS + a dense per-patch auxiliary
      loss, not exported) and writes the HF directory.
  calibrate MODEL_DIR --val P --held P
      per-label temperatures fitted on --val (NLL), folded into the classifier;
      expected calibration error and finding-set accuracy on --held, before / after;
      writes MODEL_DIR/calibration.json.
  annotate OUT.json --models ROOT --library P1,P2 --query P1,P2
      for every --query image: the calibrated specialist's probabilities (MoED)
      and the label sets of its 10 nearest --library cases by cosine of the
      pooled feature (RAD), for train_gsco.py.
"""
import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hf_vit  # noqa: E402
import phantoms  # noqa: E402

NOTE = "firstread demo specialist trained on synthetic phantoms; not a clinical model"


# --------------------------------------------------------------------------- data


def parse_seeds(s):
    a, b = s.split(":")
    return range(int(a), int(b))


def cmd_render(args):
    sizes = [int(x) for x in args.sizes.split(",")]
    mods = args.modalities.split(",")
    t0 = time.time()
    for m in mods:
        imgs = {s: [] for s in sizes}
        meta = []
        rows = []
        if args.png:
            os.makedirs(os.path.join(args.png, m), exist_ok=True)
        for seed in parse_seeds(args.seeds):
            p = phantoms.make(m, seed)
            rgb = p["image"].convert("RGB")
            for s in sizes:
                imgs[s].append(np.asarray(rgb.resize((s, s), Image.BICUBIC), dtype=np.uint8))
            fs = [{"label": f["label"], "boxes": [phantoms.to_grid(b, p["width"], p["height"]) for b in f["boxes"]]}
                  for f in p["findings"]]
            meta.append({"modality": m, "seed": seed, "findings": fs})
            if args.png:
                name = "%07d.png" % seed
                Image.fromarray(imgs[sizes[0]][-1]).save(os.path.join(args.png, m, name))
                rows.append((name, library_labels(p["findings"])))
        for s in sizes:
            np.save("%s.%s.%d.npy" % (args.out, m, s), np.stack(imgs[s]))
        json.dump(meta, open("%s.%s.json" % (args.out, m), "w"))
        if args.png:
            with open(os.path.join(args.png, m, "labels.csv"), "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(["file", "labels"])
                w.writerows(rows)
        print("render %s seeds %s: %d images, %.0f s" % (m, args.seeds, len(meta), time.time() - t0), flush=True)


def library_labels(findings):
    """labels.csv's labels of a case: its findings, or 'normal' (RAD then counts normal neighbours)"""
    import gsco_prompt
    return ";".join(f["label"] for f in findings) or gsco_prompt.NORMAL


def load_data(prefixes, modality, size):
    """the images of one modality at one size from render prefixes (those without them are skipped)"""
    imgs, metas = [], []
    for p in prefixes.split(","):
        if not os.path.exists("%s.%s.%d.npy" % (p, modality, size)):
            continue
        imgs.append(np.load("%s.%s.%d.npy" % (p, modality, size)))
        metas += json.load(open("%s.%s.json" % (p, modality)))
    if not metas:
        sys.exit("specialists.py: no %s images at %d px under %s" % (modality, size, prefixes))
    return np.concatenate(imgs), metas


def multi_hot(metas, labels):
    y = np.zeros((len(metas), len(labels)), np.float32)
    for i, m in enumerate(metas):
        for f in m["findings"]:
            y[i, labels.index(f["label"])] = 1
    return y


def patch_targets(metas, labels, g):
    """(N, g*g, L): a patch is positive for a label when its centre lies in a box of that label,
    or the box's centre lies in the patch (so that the smallest nodule owns a patch)."""
    t = np.zeros((len(metas), g, g, len(labels)), np.float32)
    cen = (np.arange(g) + 0.5) / g
    for i, m in enumerate(metas):
        for f in m["findings"]:
            li = labels.index(f["label"])
            for b in f["boxes"]:
                x1, y1, x2, y2 = [v / 999.0 for v in b]
                cols = (cen >= x1) & (cen <= x2)
                rows = (cen >= y1) & (cen <= y2)
                t[i, rows[:, None] & cols[None, :], li] = 1
                cx, cy = min(g - 1, int((x1 + x2) / 2 * g)), min(g - 1, int((y1 + y2) / 2 * g))
                t[i, cy, cx, li] = 1
    return t.reshape(len(metas), g * g, len(labels))


# --------------------------------------------------------------------------- training


def cmd_train(args):
    torch.set_grad_enabled(True)  # internvl_ref (imported by hf_vit) turns it off
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    labels = phantoms.FINDINGS[args.modality]
    imgs, metas = load_data(args.data, args.modality, args.size)
    y = torch.from_numpy(multi_hot(metas, labels))
    g = args.size // args.patch
    pt = torch.from_numpy(patch_targets(metas, labels, g)).view(len(metas), g, g, len(labels))
    cfg = hf_vit.make_config(labels, args.size, args.patch, args.dim, args.layers, args.heads, args.dim * 4, NOTE)
    model = hf_vit.ViTForImageClassification(cfg)
    hf_vit.init_weights(model, args.seed)
    aux = torch.nn.Linear(args.dim, len(labels))  # dense head on the patch tokens (training only)
    n = len(metas)
    if args.init:  # continue an earlier run of this recipe (same shape): its weights and aux head
        model.load_state_dict(hf_vit.read_safetensors(os.path.join(args.init, "model.safetensors")))
        if os.path.exists(os.path.join(args.init, "aux.pt")):
            aux.load_state_dict(torch.load(os.path.join(args.init, "aux.pt")))
        elif args.aux_fit_steps:
            fit_aux_head(model, aux, imgs, pt, g, args, rng)
    params = list(model.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.05)
    print("specialist %s: %d training images, %d labels, %d params, %dx%d patches" % (
        args.modality, n, len(labels), sum(p.numel() for p in model.parameters()), g, g), flush=True)
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "train_log.tsv"), "w")
    budget = args.minutes * 60
    t0 = time.time()
    step = 0
    pos_w = torch.tensor(args.patch_pos_weight)
    last_ckpt = t0
    while True:
        el = time.time() - t0
        if el > budget or (args.max_steps and step >= args.max_steps):
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * el / budget)))
        for gp in opt.param_groups:
            gp["lr"] = lr
        idx = rng.randint(0, n, size=args.batch)
        fl = rng.rand(args.batch) < 0.5
        x = imgs[idx].copy()
        x[fl] = x[fl][:, :, ::-1]
        pix = hf_vit.to_pixels(x)
        a = torch.from_numpy(rng.uniform(0.85, 1.15, size=(args.batch, 1, 1, 1)).astype(np.float32))
        b = torch.from_numpy(rng.uniform(-0.12, 0.12, size=(args.batch, 1, 1, 1)).astype(np.float32))
        pix = pix * a + b
        tgt = pt[idx].clone()
        flt = torch.from_numpy(fl)
        tgt[flt] = tgt[flt].flip(2)
        logits, _, toks = model(pix)
        l_cls = F.binary_cross_entropy_with_logits(logits, y[idx])
        l_aux = F.binary_cross_entropy_with_logits(aux(toks), tgt.view(args.batch, g * g, -1), pos_weight=pos_w)
        loss = l_cls + args.aux_weight * l_aux
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        logf.write("%d\t%.1f\t%.5f\t%.5f\t%.6f\n" % (step, el, float(l_cls), float(l_aux), lr))
        if step % 50 == 0:
            logf.flush()
            print("step %d t=%.0fs cls %.4f aux %.4f lr %.5f" % (step, el, float(l_cls), float(l_aux), lr), flush=True)
        if args.checkpoint_minutes and time.time() - last_ckpt > args.checkpoint_minutes * 60:
            last_ckpt = time.time()
            save_specialist(model, aux, os.path.join(args.out, "step-%d" % step), args, step, t0, n)
            model.train()
    model.eval()
    save_specialist(model, aux, args.out, args, step, t0, n)
    print("trained %s: %d steps in %.0f s -> %s" % (args.modality, step, time.time() - t0, args.out), flush=True)


def fit_aux_head(model, aux, imgs, pt, g, args, rng):
    """A shipped specialist has no aux.pt (training only): fit a fresh auxiliary head on the frozen
    model's patch tokens first, so that its random weights do not push gradients into a trained ViT."""
    opt = torch.optim.AdamW(aux.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0)
    pos_w = torch.tensor(args.patch_pos_weight)
    model.eval()
    t0 = time.time()
    for step in range(args.aux_fit_steps):
        idx = rng.randint(0, len(imgs), size=args.batch)
        with torch.no_grad():
            _, _, toks = model(hf_vit.to_pixels(imgs[idx].copy()))
        loss = F.binary_cross_entropy_with_logits(aux(toks), pt[idx].reshape(args.batch, g * g, -1), pos_weight=pos_w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            print("aux head fit step %d t=%.0fs aux %.4f" % (step + 1, time.time() - t0, float(loss)), flush=True)
    model.train()


def save_specialist(model, aux, out, args, step, t0, n):
    """OUT: the HF directory, the auxiliary head (aux.pt, for --init) and train.json."""
    model.eval()
    hf_vit.save(model, out)
    torch.save(aux.state_dict(), os.path.join(out, "aux.pt"))
    rec = {"modality": args.modality, "steps": step, "init": args.init, "seconds": round(time.time() - t0, 1), "images": n,
           "batch": args.batch, "cmd": " ".join(sys.argv)}
    json.dump(rec, open(os.path.join(out, "train.json"), "w"), indent=1)


# --------------------------------------------------------------------------- calibration


@torch.no_grad()
def run_model(model, imgs, batch=64):
    logits, feats = [], []
    for i in range(0, len(imgs), batch):
        lg, cls, _ = model(hf_vit.to_pixels(imgs[i:i + batch]))
        logits.append(lg)
        feats.append(cls)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def ece(probs, y, bins=15):
    """Expected calibration error over every (image, label) probability, equal-width bins."""
    p, t = probs.reshape(-1), y.reshape(-1)
    e = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        m = (p >= lo) & ((p < hi) if k < bins - 1 else (p <= hi))
        if m.any():
            e += m.mean() * abs(p[m].mean() - t[m].mean())
    return float(e)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def set_exact(probs, y):
    return float(((probs >= 0.5) == (y > 0.5)).all(1).mean())


def cmd_calibrate(args):
    torch.set_num_threads(args.threads)
    model = hf_vit.load(args.model)
    labels = hf_vit.labels_of(model)
    mod = args.modality or json.load(open(os.path.join(args.model, "train.json")))["modality"]
    size = model.config["image_size"]
    vi, vm = load_data(args.val, mod, size)
    hi, hm = load_data(args.held, mod, size)
    vy, hy = multi_hot(vm, labels), multi_hot(hm, labels)
    vl, _ = run_model(model, vi)
    hl, _ = run_model(model, hi)
    grid = np.exp(np.linspace(math.log(0.25), math.log(6.0), 120))
    temps = []
    for j in range(len(labels)):
        nll = [float(F.binary_cross_entropy_with_logits(torch.from_numpy(vl[:, j] / T), torch.from_numpy(vy[:, j])))
               for T in grid]
        temps.append(float(grid[int(np.argmin(nll))]))
    T = np.array(temps, np.float32)
    before, after = sigmoid(hl), sigmoid(hl / T)
    with torch.no_grad():
        model.classifier.weight /= torch.from_numpy(T).view(-1, 1)
        model.classifier.bias /= torch.from_numpy(T)
    hf_vit.save(model, args.model)
    # check: the saved weights give the calibrated probabilities
    chk, _ = run_model(hf_vit.load(args.model), hi)
    assert np.abs(sigmoid(chk) - after).max() < 1e-4
    per_label = {l: {"temperature": round(temps[j], 3), "ece": round(ece(after[:, j], hy[:, j]), 4),
                     "accuracy": round(float(((after[:, j] >= 0.5) == (hy[:, j] > 0.5)).mean()), 4)}
                 for j, l in enumerate(labels)}
    rec = {"modality": mod, "val_images": len(vm), "held_images": len(hm), "held_seeds": [hm[0]["seed"], hm[-1]["seed"]],
           "ece_before": round(ece(before, hy), 4), "ece_after": round(ece(after, hy), 4),
           "finding_set_exact_before": round(set_exact(before, hy), 4),
           "finding_set_exact_after": round(set_exact(after, hy), 4), "labels": per_label,
           "cmd": " ".join(sys.argv)}
    json.dump(rec, open(os.path.join(args.model, "calibration.json"), "w"), indent=1)
    print(json.dumps(rec, indent=1), flush=True)


# --------------------------------------------------------------------------- MoED / RAD annotations


def cmd_annotate(args):
    import gsco_prompt
    torch.set_num_threads(args.threads)
    out = {}
    for mod in args.modalities.split(","):
        model = hf_vit.load(os.path.join(args.models, mod))
        labels = hf_vit.labels_of(model)
        size = model.config["image_size"]
        li, lm = load_data(args.library, mod, size)
        qi, qm = load_data(args.query, mod, size)
        _, lf = run_model(model, li)
        ql, qf = run_model(model, qi)
        lf /= np.linalg.norm(lf, axis=1, keepdims=True)
        qf /= np.linalg.norm(qf, axis=1, keepdims=True)
        sim = qf @ lf.T
        top = np.argsort(-sim, axis=1)[:, :args.k]
        lib_sets = [library_labels(m["findings"]).split(";") for m in lm]
        qp = sigmoid(ql)
        qy = multi_hot(qm, labels)
        rad_ok = 0
        for i, m in enumerate(qm):
            nb = [lib_sets[j] for j in top[i]]
            out["%s/%d" % (mod, m["seed"])] = {"probs": [round(float(p), 4) for p in qp[i]], "labels": labels,
                                                "neighbours": nb,
                                                "moed": gsco_prompt.moed_text(qp[i], labels),
                                                "rad": gsco_prompt.rad_text(nb)}
            # RAD's majority vote (a label in more than half the neighbours) against the truth
            votes = np.array([sum(l in s for s in nb) for l in labels]) > len(nb) / 2
            rad_ok += bool((votes == (qy[i] > 0.5)).all())
        print("annotate %s: %d queries, %d library cases; MoED set exact %.3f, RAD majority set exact %.3f" % (
            mod, len(qm), len(lm), set_exact(qp, qy), rad_ok / len(qm)), flush=True)
    json.dump(out, open(args.out, "w"))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render")
    r.add_argument("out")
    r.add_argument("--seeds", required=True)
    r.add_argument("--modalities", default=",".join(phantoms.MODALITIES))
    r.add_argument("--sizes", default="112")
    r.add_argument("--png", default="")
    t = sub.add_parser("train")
    t.add_argument("out")
    t.add_argument("--modality", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--minutes", type=float, default=5)
    t.add_argument("--max-steps", type=int, default=0)
    t.add_argument("--checkpoint-minutes", type=float, default=0,
                   help="also write OUT_DIR/step-N (HF directory + aux.pt) every this many minutes")
    t.add_argument("--init", default="", help="a directory this command wrote: continue from its weights")
    t.add_argument("--aux-fit-steps", type=int, default=0,
                   help="--init without aux.pt (a shipped specialist): fit a new auxiliary head this many steps first")
    t.add_argument("--size", type=int, default=112)
    t.add_argument("--patch", type=int, default=8)
    t.add_argument("--dim", type=int, default=64)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--aux-weight", type=float, default=1.0)
    t.add_argument("--patch-pos-weight", type=float, default=3.0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=4321)
    c = sub.add_parser("calibrate")
    c.add_argument("model")
    c.add_argument("--val", required=True)
    c.add_argument("--held", required=True)
    c.add_argument("--modality", default="")
    c.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("annotate")
    a.add_argument("out")
    a.add_argument("--models", required=True)
    a.add_argument("--library", required=True)
    a.add_argument("--query", required=True)
    a.add_argument("--modalities", default=",".join(phantoms.MODALITIES))
    a.add_argument("--k", type=int, default=10)
    a.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"render": cmd_render, "train": cmd_train, "calibrate": cmd_calibrate, "annotate": cmd_annotate}[args.cmd](args)


if __name__ == "__main__":
    main()
