#!/usr/bin/python3
"""Exports a training checkpoint to an InternVL-Chat model directory the engine
loads (config.json, model.safetensors, tokenizer.model, tokenizer_config.json,
added_tokens.json), with internvl_ref.py's writers.

Usage: export.py WORK_DIR OUT_DIR [--dtype F32|BF16] [--check N]
--check N: greedy-decodes N held-out phantoms per modality with the PyTorch
reference (no KV cache) and prints the answers.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)
import internvl_ref as R  # noqa: E402

torch.set_grad_enabled(False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("out")
    ap.add_argument("--dtype", default="F32")
    ap.add_argument("--check", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = json.load(open(os.path.join(args.work, "config.json")))
    ck = torch.load(os.path.join(args.work, "ckpt.pt"))
    model = R.InternVLChat(cfg).eval()
    model.load_state_dict(ck["model"])
    os.makedirs(args.out, exist_ok=True)
    R.write_safetensors(os.path.join(args.out, "model.safetensors"), model.state_dict(), args.dtype)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1, ensure_ascii=False)
    for fn in ("tokenizer.model", "tokenizer_config.json", "added_tokens.json"):
        shutil.copy(os.path.join(args.work, "tokenizer", fn), os.path.join(args.out, fn))
    print("exported step %d (%.0f s of training, loss ema %.4f) to %s" % (ck["step"], ck["elapsed"], ck["ema"], args.out))
    if args.check:
        import sentencepiece as spm
        import phantoms
        import instruct
        sp = spm.SentencePieceProcessor(model_file=os.path.join(args.out, "tokenizer.model"))
        added = {s: sp.piece_to_id(s) for s in R.SPECIAL_CHAT + ["<img>", "</img>"]}
        added.update(json.load(open(os.path.join(args.out, "added_tokens.json"))))
        inv = {v: k for k, v in added.items()}
        tok = R.SpRefTokenizer(sp, added, False, 1)
        lm = model.language_model
        for m in phantoms.MODALITIES:
            for p in phantoms.heldout(m, args.check):
                pix = R.load_pixels(p["image"], cfg)
                vit = model.extract_feature(pix)
                q = instruct.REPORT_EN.format(mod=instruct.MOD_EN[m])
                prompt = R.build_prompt(q, R.HERMES_SYS_V12, vit.shape[1])
                seq = tok.encode(prompt)
                out = []
                for _ in range(120):
                    emb = lm.embed(torch.tensor([seq]))
                    emb[0, torch.tensor(seq) == added["<IMG_CONTEXT>"]] = vit.reshape(-1, vit.shape[-1])
                    nxt = int(torch.argmax(lm(emb)[0, -1]))
                    if nxt == added["<|im_end|>"]:
                        break
                    out.append(nxt)
                    seq.append(nxt)
                text = "".join(inv[i] if i in inv else sp.decode([i]) for i in out)
                gt = [(f["label"], [phantoms.to_grid(b, p["width"], p["height"]) for b in f["boxes"]]) for f in p["findings"]]
                print(m, "GT", gt, "\n   ->", text.replace("\n", " | "))


if __name__ == "__main__":
    main()
