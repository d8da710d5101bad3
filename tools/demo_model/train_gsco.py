#!/usr/bin/python3
"""GSCo step of the demo recipe: fine-tunes the demo generalist (an exported
model directory, e.g. models/demo) on prompts that carry the specialists'
diagnoses (MoED) and the most similar library cases' diagnoses (RAD), as
firstread's pipeline assembles them (gsco_prompt.py), with GSCo dropout: each
prompt gets both sentences, only one, or none (route gsco: off), so the model
answers in every mode.

MedDr trains its GSCo stage with the ViT and projector frozen; so does this
step: the image tokens (ViT + pixel shuffle + mlp1) are computed once per
image and flip, and only the decoder is trained.

Usage: train_gsco.py MODEL_DIR OUT_DIR --cache PREFIX --annotations FILE --minutes N
  --cache: specialists.py render prefix(es) holding the 224 px images of the query seeds (a prefix may
           hold some modalities only)
  --annotations: specialists.py annotate output for the same seeds
Writes OUT_DIR as a complete model directory (config, tokenizer copied from MODEL_DIR).
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402  (tokenizer symbols, vision_tokens, instruct, internvl_ref)
import gsco_prompt  # noqa: E402
import hf_vit  # noqa: E402
import phantoms  # noqa: E402

R, instruct = T.R, T.instruct
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "added_tokens.json")


def load_generalist(model_dir):
    import sentencepiece as spm
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    model = R.InternVLChat(cfg)
    model.load_state_dict(hf_vit.read_safetensors(os.path.join(model_dir, "model.safetensors")))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    added = {s: sp.piece_to_id(s) for s in T.USER_SYMBOLS}
    added.update(json.load(open(os.path.join(model_dir, "added_tokens.json"))))
    return cfg, model, R.SpRefTokenizer(sp, added, False, 1)


def save_model(model_dir, out, model, cfg, rec):
    """OUT as a complete model directory: the weights, config, the tokenizer of MODEL_DIR, gsco_train.json."""
    os.makedirs(out, exist_ok=True)
    R.write_safetensors(os.path.join(out, "model.safetensors"), model.state_dict(), "F32")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1, ensure_ascii=False)
    for fn in TOKENIZER_FILES:
        if os.path.abspath(model_dir) != os.path.abspath(out):
            shutil.copy(os.path.join(model_dir, fn), os.path.join(out, fn))
    json.dump(rec, open(os.path.join(out, "gsco_train.json"), "w"), indent=1)


def decision_positions(answer, ref_id, end_id):
    """Positions in an answer's token ids where the finding set is decided: the first token (a finding or
    the normal sentence), each finding's first label token (after <ref>), the token before each later
    <ref> (one more finding rather than the end) and the end token (no more findings)."""
    pos = {0}
    for i, t in enumerate(answer):
        if t == ref_id:
            if i + 1 < len(answer):
                pos.add(i + 1)
            if i > 0:
                pos.add(i - 1)
        elif t == end_id:
            pos.add(i)
    return sorted(pos)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--annotations", required=True)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--checkpoint-minutes", type=float, default=0,
                    help="also write OUT_DIR/step-N (a complete model directory) every this many minutes")
    ap.add_argument("--imgs", type=int, default=12, help="images per step")
    ap.add_argument("--qa", type=int, default=2, help="instruction pairs per image")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--digit-weight", type=float, default=2.0)
    ap.add_argument("--decision-weight", type=float, default=1.0,
                    help="loss weight of the tokens that decide the finding set (decision_positions)")
    ap.add_argument("--mix", default="0.8,0.08,0.06", help="report,detection,classification (rest: region)")
    ap.add_argument("--modes", default="0.45,0.15,0.15,0.25", help="GSCo dropout: both,moed,rad,off")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=2468)
    ap.add_argument("--per-modality", type=int, default=0, help="use only the first N images of each modality")
    ap.add_argument("--modality-weights", default="1,1,1,1",
                    help="sampling weight of chest,derm,fundus,endo images (chest has most to gain from GSCo)")
    ap.add_argument("--label-weights", default="",
                    help="label=w,...: an image with a finding of that label is drawn w times as often (the "
                         "largest w of its findings), e.g. cardiomegaly=3: the images the generalist still reads "
                         "against the specialists")
    args = ap.parse_args()
    lw = {}
    for kv in filter(None, args.label_weights.split(",")):
        lab, w = kv.rsplit("=", 1)
        if not any(lab in phantoms.FINDINGS[m_] for m_ in phantoms.MODALITIES):
            raise SystemExit("train_gsco: --label-weights names %r, which is no finding label of %s"
                             % (lab, ", ".join(phantoms.MODALITIES)))
        lw[lab] = float(w)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    instruct.MIX[:] = [float(x) for x in args.mix.split(",")]
    pm = np.array([float(x) for x in args.modes.split(",")])
    modes = ["both", "moed", "rad", "off"]
    cfg, model, tok = load_generalist(args.model)
    ann = json.load(open(args.annotations))
    size = cfg["force_image_size"]
    gpatch = size // cfg["vision_config"]["patch_size"]

    # images, findings and annotations of every query phantom
    imgs, metas = [], []
    for mod in phantoms.MODALITIES:
        for p in args.cache.split(","):
            if not os.path.exists("%s.%s.json" % (p, mod)):  # a render of some modalities only
                continue
            lim = args.per_modality or None
            imgs.append(np.load("%s.%s.%d.npy" % (p, mod, size))[:lim])
            metas += json.load(open("%s.%s.json" % (p, mod)))[:lim]
    imgs = np.concatenate(imgs)
    keys = ["%s/%d" % (m["modality"], m["seed"]) for m in metas]
    # a modality without a specialist (no annotations) is trained with gsco off only
    without = sorted(set(k.split("/")[0] for k in keys if k not in ann))
    if without:
        print("gsco fine-tune: no specialist for %s: those images get the route prompt alone" % ", ".join(without),
              flush=True)
    n = len(metas)
    t0 = time.time()
    # frozen vision side: image tokens of every image, unflipped and flipped
    with torch.no_grad():
        vt = []
        for fl in (False, True):
            chunks = []
            for i in range(0, n, 64):
                b = imgs[i:i + 64]
                if fl:
                    b = b[:, :, ::-1]
                chunks.append(T.vision_tokens(model, T.to_pixels(np.ascontiguousarray(b)), cfg, gpatch))
            vt.append(torch.cat(chunks))
        VT = torch.stack(vt)  # (2, n, T, d)
    flipped = [instruct.flip_findings(m["findings"]) for m in metas]
    mw = dict(zip(phantoms.MODALITIES, [float(x) for x in args.modality_weights.split(",")]))
    pick = np.array([mw[m["modality"]] * max([lw.get(f["label"], 1.0) for f in m["findings"]] or [1.0])
                     for m in metas])
    if lw:
        print("gsco fine-tune: --label-weights %s: %d of %d images drawn more often" % (
            args.label_weights, int((pick != np.array([mw[m["modality"]] for m in metas])).sum()), n), flush=True)
    pick /= pick.sum()
    print("gsco fine-tune: %d images, image tokens computed in %.0f s" % (n, time.time() - t0), flush=True)

    for p_ in list(model.vision_model.parameters()) + list(model.mlp1.parameters()):
        p_.requires_grad_(False)
    lm = model.language_model
    params = [p_ for p_ in lm.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    digit_ids = torch.tensor(sorted(set(tok.sp.piece_to_id(str(d)) for d in range(10))))
    img_ctx = tok.added["<IMG_CONTEXT>"]
    end = tok.added["<|im_end|>"]
    n_img_tok = VT.shape[2]
    enc_cache = {}

    def enc(s):
        v = enc_cache.get(s)
        if v is None:
            v = enc_cache[s] = tok.encode(s)
        return v

    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "gsco_loss.tsv"), "w")
    budget = args.minutes * 60
    ts = time.time()
    step, ema, mode_count = 0, None, {m: 0 for m in modes}
    last_ckpt = ts
    while True:
        el = time.time() - ts
        if el > budget or (args.max_steps and step >= args.max_steps):
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * el / budget)))
        for gp in opt.param_groups:
            gp["lr"] = lr
        idx = rng.choice(n, size=args.imgs, p=pick)
        fl = rng.rand(args.imgs) < 0.5
        seqs = []
        for bi, i in enumerate(idx):
            m = metas[i]
            a_ = ann.get(keys[i])
            f = flipped[i] if fl[bi] else m["findings"]
            for _ in range(args.qa):
                q, a = instruct.sample(rng, m["modality"], f)
                mode = modes[rng.choice(4, p=pm / pm.sum())] if a_ else "off"
                mode_count[mode] += 1
                if a_:
                    q = gsco_prompt.assemble(q, mode, a_["moed"], a_["rad"])
                seqs.append((bi, enc(R.build_prompt(q, T.SYS_MSG, n_img_tok)), enc(a) + [end]))
        ref = tok.added["<ref>"]
        vit = VT[fl.astype(int), idx]
        seqs.sort(key=lambda s_: len(s_[1]) + len(s_[2]))
        ce_sum, w_sum = 0.0, 0.0
        half = (len(seqs) + 1) // 2
        for c0 in range(0, len(seqs), half):
            chunk = seqs[c0:c0 + half]
            Lc = max(len(p) + len(a) for _, p, a in chunk)
            ids = torch.zeros(len(chunk), Lc, dtype=torch.long)
            tgt = torch.full((len(chunk), Lc), -100, dtype=torch.long)
            dw = torch.ones(len(chunk), Lc)
            for k, (_, p, a) in enumerate(chunk):
                full = p + a
                ids[k, :len(full)] = torch.tensor(full)
                tgt[k, len(p) - 1:len(full) - 1] = torch.tensor(a)
                if args.decision_weight != 1.0:
                    dw[k, [len(p) - 1 + j for j in decision_positions(a, ref, end)]] = args.decision_weight
            emb = lm.embed(ids)
            sel = ids == img_ctx
            emb = emb.masked_scatter(sel.unsqueeze(-1), vit[torch.tensor([bi for bi, _, _ in chunk])].reshape(-1, vit.shape[-1]))
            logits = lm(emb)
            tflat = tgt.reshape(-1)
            keep = tflat != -100
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1])[keep], tflat[keep], reduction="none")
            tw = torch.where(torch.isin(tflat[keep], digit_ids), torch.tensor(args.digit_weight), torch.tensor(1.0))
            tw = tw * dw.reshape(-1)[keep]
            ce_sum = ce_sum + (ce * tw).sum()
            w_sum += float(tw.sum())
        loss = ce_sum / w_sum
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        lv = float(loss)
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        logf.write("%d\t%.1f\t%.5f\t%.5f\t%.6f\n" % (step, el, lv, ema, lr))
        if step % 20 == 0:
            logf.flush()
            print("C step %d t=%.0fs loss %.4f ema %.4f lr %.5f" % (step, el, lv, ema, lr), flush=True)
        if args.checkpoint_minutes and time.time() - last_ckpt > args.checkpoint_minutes * 60:
            last_ckpt = time.time()
            save_model(args.model, os.path.join(args.out, "step-%d" % step), model, cfg,
                       {"steps": step, "train_seconds": round(time.time() - ts, 1), "loss_ema": round(ema, 4),
                        "prompts_per_mode": dict(mode_count), "cmd": " ".join(sys.argv)})
    train_s = time.time() - ts
    rec = {"steps": step, "train_seconds": round(train_s, 1), "prep_seconds": round(ts - t0, 1), "images": n,
           "loss_ema": round(ema or 0, 4), "prompts_per_mode": mode_count, "cmd": " ".join(sys.argv)}
    save_model(args.model, args.out, model, cfg, rec)
    print("done:", json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
