#!/usr/bin/python3
"""Trains firstread's demo model (InternVL-Chat-V1-2 architecture, tiny) on the
synthetic phantoms, on the CPU with Debian's python3-torch.

Usage: train.py WORK_DIR --cache CACHE_PREFIX [--minutes 33] [--threads 2] [--seed 1234]
Writes WORK_DIR/tokenizer/ (tokenizer.model, tokenizer_config.json, added_tokens.json),
WORK_DIR/config.json, WORK_DIR/ckpt.pt (every --ckpt-minutes), WORK_DIR/loss.tsv.
export.py turns a checkpoint into models/demo/.
"""
import argparse
import io
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)
import internvl_ref as R  # noqa: E402
import instruct  # noqa: E402

torch.set_grad_enabled(True)

USER_SYMBOLS = R.SPECIAL_CHAT + ["<img>", "</img>"]
EXTRA = [t for t in R.IMG_TOKENS if t not in ("<img>", "</img>")]
SYS_MSG = R.HERMES_SYS_V12  # "Answer the questions." (engine default for ps v1 models)


def build_tokenizer(out_dir, lines, vocab_size):
    import sentencepiece as spm
    os.makedirs(out_dir, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, user_defined_symbols=USER_SYMBOLS,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        add_dummy_prefix=False, hard_vocab_limit=False, max_sentence_length=20000)
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()
    added = {s: sp.piece_to_id(s) for s in USER_SYMBOLS}
    extra = {s: n + i for i, s in enumerate(EXTRA)}
    with open(os.path.join(out_dir, "added_tokens.json"), "w") as f:
        json.dump(extra, f)
    added.update(extra)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
                   "legacy": True, "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>",
                   "model_max_length": 4096}, f)
    return R.SpRefTokenizer(sp, added, False, 1), n + len(extra)


def make_config(vocab, eos_id, args):
    vc = R.vision_cfg(hidden_size=args.vit_dim, intermediate_size=args.vit_dim * 3, num_attention_heads=4,
                      num_hidden_layers=args.vit_layers, image_size=args.size, qkv_bias=False, qk_normalization=True)
    lc = R.llm_cfg("LlamaForCausalLM", vocab, hidden_size=args.llm_dim, intermediate_size=int(args.llm_dim * 2.5) // 8 * 8,
                   num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=args.llm_layers,
                   rope_theta=10000.0, eos_token_id=eos_id, bos_token_id=1, max_position_embeddings=1024,
                   tie_word_embeddings=False)
    return {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "vision_config": vc,
            "llm_config": lc, "downsample_ratio": 0.5, "select_layer": -1, "template": "Hermes-2",
            "force_image_size": args.size, "dynamic_image_size": False, "use_thumbnail": False, "pad2square": False,
            "ps_version": "v1", "box_scale": 999,
            "_demo_note": "firstread demo model trained on synthetic phantoms; not a clinical model"}


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        with torch.no_grad():
            if name.endswith("bias"):
                p.zero_()
            elif name.endswith(".ls1") or name.endswith(".ls2"):
                p.fill_(0.5)
            elif p.dim() == 1:
                p.fill_(1.0)
            elif "position_embedding" in name or "class_embedding" in name or "embed_tokens" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                gain = 0.5 if any(k in name for k in ("o_proj", "down_proj", "attn.proj", "fc2")) else 1.0
                p.copy_(gain * torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


MEAN = torch.tensor(R.MEAN).view(1, 3, 1, 1)
STD = torch.tensor(R.STD).view(1, 3, 1, 1)


def to_pixels(u8):  # (B,S,S,3) uint8 -> normalised (B,3,224,224), as ToTensor + Normalize
    t = torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(255)
    return (t - MEAN) / STD


def encode_pair(tok, q, a, n_img):
    prompt = R.build_prompt(q, SYS_MSG, n_img)
    p = tok.encode(prompt)
    ans = tok.encode(a) + [tok.added["<|im_end|>"]]
    return p, ans


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--minutes", type=float, default=33)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--imgs", type=int, default=12)
    ap.add_argument("--qa", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--vit-dim", type=int, default=96)
    ap.add_argument("--vit-layers", type=int, default=3)
    ap.add_argument("--llm-dim", type=int, default=160)
    ap.add_argument("--llm-layers", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=700)
    ap.add_argument("--ckpt-minutes", type=float, default=3)
    ap.add_argument("--extra-cache", default="", help="appended once it exists (rendered while training runs)")
    ap.add_argument("--resume", default="", help="checkpoint to start from (same config); tokenizer reused")
    ap.add_argument("--aux-weight", type=float, default=0.0,
                    help="auxiliary per-patch finding/box loss on the ViT output (head not exported)")
    ap.add_argument("--digit-weight", type=float, default=1.0, help="loss weight of digit tokens in answers")
    ap.add_argument("--mix", default="", help="task mix report,detection,classification (region-to-text: the rest)")
    ap.add_argument("--llm-aux-weight", type=float, default=0.0,
                    help="auxiliary finding-set loss on the decoder state that predicts the first answer token")
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--max-steps", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    os.makedirs(args.work, exist_ok=True)

    imgs = np.load(args.cache + ".npy", mmap_mode="r")
    metas = json.load(open(args.cache + ".json"))
    n = min(len(imgs), len(metas))
    imgs = np.ascontiguousarray(imgs[:n])
    if imgs.shape[1] != args.size:
        from PIL import Image
        imgs = np.stack([np.asarray(Image.fromarray(np.asarray(a)).resize((args.size, args.size), Image.BICUBIC)) for a in imgs])
    metas = metas[:n]
    print("training images:", n, flush=True)

    tok_dir = os.path.join(args.work, "tokenizer")
    if args.resume:
        import shutil
        import sentencepiece as spm
        src = os.path.dirname(os.path.abspath(args.resume))
        if os.path.abspath(src) != os.path.abspath(args.work):
            shutil.copytree(os.path.join(src, "tokenizer"), tok_dir, dirs_exist_ok=True)
            shutil.copy(os.path.join(src, "config.json"), os.path.join(args.work, "config.json"))
        sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "tokenizer.model"))
        added = {s: sp.piece_to_id(s) for s in USER_SYMBOLS}
        added.update(json.load(open(os.path.join(tok_dir, "added_tokens.json"))))
        tok = R.SpRefTokenizer(sp, added, False, 1)
        cfg = json.load(open(os.path.join(args.work, "config.json")))
        vocab = cfg["llm_config"]["vocab_size"]
        model = R.InternVLChat(cfg)
        ck = torch.load(args.resume)
        model.load_state_dict(ck["model"])
        print("resumed from %s (step %d, %.0f s)" % (args.resume, ck["step"], ck["elapsed"]), flush=True)
    else:
        tok, vocab = build_tokenizer(tok_dir, instruct.corpus_lines(metas, np.random.RandomState(7)), args.vocab)
        cfg = make_config(vocab, tok.added["<|im_end|>"], args)
        with open(os.path.join(args.work, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1, ensure_ascii=False)
        model = R.InternVLChat(cfg)
        init_weights(model, args.seed)
    labels_all = [l for m in ("chest", "derm", "fundus", "endo") for l in instruct.FINDINGS[m]]
    vd = cfg["vision_config"]["hidden_size"]
    aux = torch.nn.Linear(vd, len(labels_all) + 4)
    aux_llm = torch.nn.Linear(cfg["llm_config"]["hidden_size"], len(labels_all))
    if args.mix:
        instruct.MIX[:] = [float(x) for x in args.mix.split(",")]
    captured = []
    gpatch = args.size // 14
    digit_ids = set(tok.sp.piece_to_id(str(d)) for d in range(10))
    n_params = sum(p.numel() for p in model.parameters())
    print("params:", n_params, "vocab:", vocab, flush=True)
    n_img_tok = (args.size // 14 // 2) ** 2
    img_ctx = tok.added["<IMG_CONTEXT>"]
    lm = model.language_model
    lm.model.norm.register_forward_hook(lambda mod_, inp_, out_: captured.append(out_))

    opt = torch.optim.AdamW(list(model.parameters()) + list(aux.parameters()) + list(aux_llm.parameters()), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    budget = args.minutes * 60
    t0 = time.time()
    last_ck = t0
    logf = open(os.path.join(args.work, "loss.tsv"), "a")
    step = 0
    ema = None
    step0, el0 = 0, 0.0
    if args.resume:
        step0, el0, ema = ck["step"], ck["elapsed"], ck["ema"]
    cmd = " ".join(sys.argv)
    while True:
        el = time.time() - t0
        if el > budget or (args.max_steps and step >= args.max_steps):
            break
        prog = el / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        for gp in opt.param_groups:
            gp["lr"] = lr
        idx = rng.randint(0, n, size=args.imgs)
        batch = imgs[idx].copy()
        flips = rng.rand(args.imgs) < 0.5
        batch[flips] = batch[flips][:, :, ::-1]
        pix = to_pixels(np.ascontiguousarray(batch))
        seqs = []
        for bi, i in enumerate(idx):
            m = metas[i]
            f = instruct.flip_findings(m["findings"]) if flips[bi] else m["findings"]
            for _ in range(args.qa):
                q, a = instruct.sample(rng, m["modality"], f)
                p, ans = encode_pair(tok, q, a, n_img_tok)
                seqs.append((bi, p, ans))
        L = max(len(p) + len(a) for _, p, a in seqs)
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        tgt = torch.full((len(seqs), L), -100, dtype=torch.long)
        img_of = torch.tensor([bi for bi, _, _ in seqs])
        for k, (_, p, a) in enumerate(seqs):
            full = p + a
            ids[k, :len(full)] = torch.tensor(full)
            tgt[k, len(p) - 1:len(full) - 1] = torch.tensor(a)
        hid = model.vision_model(pix)[-1]
        feats = hid[:, 1:, :]
        v = feats.reshape(feats.shape[0], gpatch, gpatch, -1)
        v = R.pixel_shuffle(v, 0.5, cfg.get("ps_version", "v1"))
        vit = model.mlp1(v.reshape(v.shape[0], -1, v.shape[-1]))  # as extract_feature (select_layer -1)
        emb = lm.embed(ids)
        sel = ids == img_ctx
        emb = emb.masked_scatter(sel.unsqueeze(-1), vit[img_of].reshape(-1, vit.shape[-1]))
        captured.clear()
        logits = lm(emb)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100,
                                               reduction="none")
        tw = (tgt.reshape(-1) != -100).float()
        if args.digit_weight != 1.0:
            isd = torch.tensor([int(x) in digit_ids for x in tgt.reshape(-1).tolist()])
            tw = tw * torch.where(isd, torch.tensor(args.digit_weight), torch.tensor(1.0))
        loss = (ce * tw).sum() / tw.sum()
        if args.llm_aux_weight > 0:
            hs = captured[0]
            pos = torch.tensor([len(p) - 1 for _, p, _ in seqs])
            h_first = hs[torch.arange(len(seqs)), pos]
            lab_t = torch.zeros(len(seqs), len(labels_all))
            for k, (bi, _, _) in enumerate(seqs):
                for f in metas[idx[bi]]["findings"]:
                    lab_t[k, labels_all.index(f["label"])] = 1
            llm_aux = torch.nn.functional.binary_cross_entropy_with_logits(aux_llm(h_first), lab_t)
        else:
            llm_aux = torch.tensor(0.0)
        if args.aux_weight > 0:
            # per-patch targets: finding classes covering the patch, and the box of the smallest one
            cls_t = torch.zeros(len(idx), gpatch * gpatch, len(labels_all))
            box_t = torch.zeros(len(idx), gpatch * gpatch, 4)
            box_m = torch.zeros(len(idx), gpatch * gpatch)
            box_area = {}
            cell = 999.0 / gpatch
            for bi, i in enumerate(idx):
                f_ = instruct.flip_findings(metas[i]["findings"]) if flips[bi] else metas[i]["findings"]
                for f in f_:
                    li = labels_all.index(f["label"])
                    for b in f["boxes"]:
                        area = (b[2] - b[0]) * (b[3] - b[1])
                        bcx, bcy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                        for r_ in range(gpatch):
                            for c_ in range(gpatch):
                                px_, py_ = (c_ + 0.5) * cell, (r_ + 0.5) * cell
                                inside = b[0] <= px_ <= b[2] and b[1] <= py_ <= b[3]
                                centre = c_ * cell <= bcx < (c_ + 1) * cell and r_ * cell <= bcy < (r_ + 1) * cell
                                if inside or centre:
                                    k_ = r_ * gpatch + c_
                                    cls_t[bi, k_, li] = 1
                                    if box_m[bi, k_] == 0 or area < box_area[(bi, k_)]:
                                        box_t[bi, k_] = torch.tensor(b, dtype=torch.float32) / 999.0
                                        box_area[(bi, k_)] = area
                                    box_m[bi, k_] = 1
            ao = aux(feats)
            la = torch.nn.functional.binary_cross_entropy_with_logits(ao[..., :len(labels_all)], cls_t)
            lb = ((torch.sigmoid(ao[..., len(labels_all):]) - box_t).abs().sum(-1) * box_m).sum() / box_m.sum().clamp(min=1)
            aux_loss = la + lb
            total = loss + args.aux_weight * aux_loss + args.llm_aux_weight * llm_aux
        else:
            aux_loss = torch.tensor(0.0)
            total = loss + args.llm_aux_weight * llm_aux
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        lv = float(loss)
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        logf.write("%d\t%.1f\t%.5f\t%.5f\t%.6f\t%.5f\n" % (step + step0, time.time() - t0 + el0, lv, ema, lr,
                                                          float(aux_loss)))
        logf.flush()
        if step % 10 == 0:
            print("step %d t=%.0fs loss %.4f ema %.4f aux %.4f llm_aux %.4f lr %.5f seqlen %d" % (
                step + step0, time.time() - t0 + el0, lv, ema, float(aux_loss), float(llm_aux), lr, L), flush=True)
        if args.extra_cache and os.path.exists(args.extra_cache + ".json"):
            more = np.load(args.extra_cache + ".npy")
            mm = json.load(open(args.extra_cache + ".json"))
            if more.shape[1] != args.size:
                from PIL import Image
                more = np.stack([np.asarray(Image.fromarray(a).resize((args.size, args.size), Image.BICUBIC)) for a in more])
            imgs = np.concatenate([imgs, more])
            metas = metas + mm
            n = len(metas)
            args.extra_cache = ""
            print("added extra cache: now %d images" % n, flush=True)
        if time.time() - last_ck > args.ckpt_minutes * 60:
            torch.save({"model": model.state_dict(), "step": step + step0, "elapsed": time.time() - t0 + el0, "ema": ema,
                        "cmd": cmd, "seed": args.seed}, os.path.join(args.work, "ckpt.pt.tmp"))
            os.replace(os.path.join(args.work, "ckpt.pt.tmp"), os.path.join(args.work, "ckpt.pt"))
            last_ck = time.time()
    torch.save({"model": model.state_dict(), "step": step + step0, "elapsed": time.time() - t0 + el0, "ema": ema, "cmd": cmd,
                "seed": args.seed}, os.path.join(args.work, "ckpt.pt"))
    print("done: %d steps in %.0f s" % (step, time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
