#!/usr/bin/python3
"""Trains firstread's demo model (InternVL-Chat-V1-2 architecture, tiny) on the
synthetic phantoms, on the CPU with Debian's python3-torch, in two phases in
one run:

  A  "dense detector" pretraining of ViT + pixel shuffle + mlp1 alone (no
     decoder; cheap steps): an auxiliary head (not exported) on every image
     token (the mlp1 output the decoder reads) predicts, per finding label,
     whether a finding's box centre lies in the token's cell, and that box as
     a regression and as the decimal digits of its four 0..999 coordinates
     (the digits the decoder has to write).
  B  the whole model on the instruction data (mostly grounded reports), the
     auxiliary head loss kept on.

Usage: train.py WORK_DIR --cache CACHE_PREFIX --minutes 60 --vit-minutes 12 --threads 1 --seed 1234
Data-parallel over both cores (one process per core, --world 2 --rank 0|1,
same arguments otherwise; gradients averaged with torch.distributed over gloo
on 127.0.0.1; rank 0 keeps the clock, writes and evaluates): two 1-thread
processes train 1.4x faster than one, where one process with 2 threads is
slower than with 1 (torch 1.13's intra-op threads on these small matrices).
Writes WORK_DIR/tokenizer/, WORK_DIR/config.json, WORK_DIR/ckpt.pt, WORK_DIR/loss.tsv,
WORK_DIR/eval.log (--eval-minutes: export + C++ bench, synchronously, excluded
from the training time). export.py turns a checkpoint into models/demo/.
"""
import argparse
import io
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)
import internvl_ref as R  # noqa: E402
import instruct  # noqa: E402

torch.set_grad_enabled(True)

USER_SYMBOLS = R.SPECIAL_CHAT + ["<img>", "</img>"]
EXTRA = [t for t in R.IMG_TOKENS if t not in ("<img>", "</img>")]
SYS_MSG = R.HERMES_SYS_V12  # "Answer the questions." (engine default for ps v1 models)
LABELS = [l for m in ("chest", "derm", "fundus", "endo") for l in instruct.FINDINGS[m]]
NL = len(LABELS)
NAUX = 1 + 4 + 4 + 4 * 30  # objectness, box regression, centre offset + log size, 4 coordinates x 3 digits x 10
DIG0 = 9  # first digit logit in an aux output row


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
                      num_hidden_layers=args.vit_layers, image_size=args.size, patch_size=args.patch, qkv_bias=False,
                      qk_normalization=True)
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


def to_pixels(u8):  # (B,S,S,3) uint8 -> normalised (B,3,S,S), as ToTensor + Normalize
    t = torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(255)
    return (t - MEAN) / STD


def token_centres(gpatch, ps_version):
    """Centre of each image token (after pixel shuffle) on the 0..1 grid, (T, 2) as (x, y)."""
    r, c = torch.meshgrid(torch.arange(gpatch, dtype=torch.float32), torch.arange(gpatch, dtype=torch.float32),
                          indexing="ij")
    m = torch.stack([c, r], -1).unsqueeze(0)  # (1, g, g, 2): x, y of each patch
    s = R.pixel_shuffle(m, 0.5, ps_version)  # (1, g/2, g/2, 8)
    s = s.reshape(-1, 4, 2).mean(1)  # the 4 patches of each token
    return ((s + 0.5) / gpatch).numpy()


def aux_targets(findings, centres):
    """Per token and label: objectness, box (0..999 ints). A box belongs to the token nearest its centre."""
    T = len(centres)
    obj = np.zeros((T, NL), np.float32)
    box = np.zeros((T, NL, 4), np.int64)
    area = np.full((T, NL), np.inf)
    for f in findings:
        li = LABELS.index(f["label"])
        for b in f["boxes"]:
            cx, cy = (b[0] + b[2]) / 2 / 999, (b[1] + b[3]) / 2 / 999
            t = int(np.argmin((centres[:, 0] - cx) ** 2 + (centres[:, 1] - cy) ** 2))
            a = (b[2] - b[0]) * (b[3] - b[1])
            if a < area[t, li]:  # two boxes of one label in one cell (rare): keep the smaller
                obj[t, li] = 1
                box[t, li] = b
                area[t, li] = a
    return obj, box


class AuxHead(torch.nn.Module):
    def __init__(self, d, centres, gpatch):
        super().__init__()
        self.fc = torch.nn.Linear(d, NL * NAUX)
        # token cell centres on the 0..1 grid and the cell size: the offset /
        # size targets are relative to the token, which a ViT learns faster
        # than absolute coordinates (translation-equivariant, as in FCOS)
        self.register_buffer("centres", torch.from_numpy(np.asarray(centres, np.float32)), persistent=False)
        self.cell = 2.0 / gpatch

    def loss(self, tokens, obj, box):
        """tokens (B,T,d); obj (B,T,NL) float; box (B,T,NL,4) int64 0..999."""
        B, T, _ = tokens.shape
        o = self.fc(tokens).view(B, T, NL, NAUX)
        l_obj = F.binary_cross_entropy_with_logits(o[..., 0], obj, pos_weight=torch.tensor(4.0))
        pos = obj > 0
        if not bool(pos.any()):
            return l_obj, torch.tensor(0.0)
        op = o[pos]  # (P, NAUX)
        bp = box[pos]  # (P, 4)
        bf = bp.float() / 999
        l_reg = (torch.sigmoid(op[:, 1:5]) - bf).abs().mean() * 10
        cen = self.centres[pos.nonzero()[:, 1]]  # (P, 2)
        off = torch.stack([(bf[:, 0] + bf[:, 2]) / 2 - cen[:, 0], (bf[:, 1] + bf[:, 3]) / 2 - cen[:, 1]], -1) / self.cell
        size = torch.log(torch.stack([bf[:, 2] - bf[:, 0], bf[:, 3] - bf[:, 1]], -1).clamp(min=1e-3) / self.cell)
        l_rel = (op[:, 5:7] - off).abs().mean() * 4 + (op[:, 7:9] - size).abs().mean() * 2
        digits = torch.stack([bp // 100, (bp // 10) % 10, bp % 10], -1)  # (P, 4, 3)
        dl = op[:, DIG0:].reshape(-1, 4, 3, 10)
        w = torch.tensor([1.0, 1.0, 0.3]).view(1, 1, 3)
        ce = F.cross_entropy(dl.reshape(-1, 10), digits.reshape(-1), reduction="none").view(-1, 4, 3)
        l_dig = (ce * w).sum() / (w.sum() * ce.shape[0] * 4)
        return l_obj, l_reg + l_rel + l_dig


def vision_tokens(model, pix, cfg, gpatch):
    hid = model.vision_model(pix)[-1]
    feats = hid[:, 1:, :]
    v = feats.reshape(feats.shape[0], gpatch, gpatch, -1)
    v = R.pixel_shuffle(v, 0.5, cfg.get("ps_version", "v1"))
    return model.mlp1(v.reshape(v.shape[0], -1, v.shape[-1]))  # as extract_feature (select_layer -1)


def augment(pix, rng):
    """Brightness / contrast jitter per image (normalised space)."""
    B = pix.shape[0]
    a = torch.from_numpy(rng.uniform(0.85, 1.15, size=(B, 1, 1, 1)).astype(np.float32))
    b = torch.from_numpy(rng.uniform(-0.15, 0.15, size=(B, 1, 1, 1)).astype(np.float32))
    return pix * a + b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--cache", required=True, help="cache prefix(es), comma-separated (make_cache.py)")
    ap.add_argument("--minutes", type=float, default=60, help="total training time budget (both phases)")
    ap.add_argument("--vit-minutes", type=float, default=12, help="phase A (ViT + mlp1 + aux head only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--imgs", type=int, default=16, help="images per step, phase B")
    ap.add_argument("--vit-imgs", type=int, default=32, help="images per step, phase A")
    ap.add_argument("--qa", type=int, default=2, help="instruction pairs per image, phase B")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--vit-lr", type=float, default=3e-3)
    ap.add_argument("--vis-lr-factor", type=float, default=0.5, help="phase B lr factor of ViT, mlp1, aux head")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--patch", type=int, default=28)
    ap.add_argument("--vit-dim", type=int, default=96)
    ap.add_argument("--vit-layers", type=int, default=4)
    ap.add_argument("--llm-dim", type=int, default=160)
    ap.add_argument("--llm-layers", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--aux-weight", type=float, default=0.5, help="aux head loss weight in phase B")
    ap.add_argument("--digit-weight", type=float, default=2.0, help="loss weight of digit tokens in answers")
    ap.add_argument("--mix", default="0.8,0.08,0.06", help="task mix report,detection,classification (rest: region)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--chunks", type=int, default=2, help="length-sorted chunks per step (padding)")
    ap.add_argument("--ckpt-minutes", type=float, default=3)
    ap.add_argument("--eval-minutes", type=float, default=0, help="export + C++ bench every N minutes (paused clock)")
    ap.add_argument("--eval-cmd", default="", help="shell command run with $CKPT_DIR set (after export)")
    ap.add_argument("--held", default="", help="held-out cache prefix: score the aux head after phase A")
    ap.add_argument("--max-steps", type=int, default=0, help="stop phase B after N steps (profiling)")
    ap.add_argument("--vit-max-steps", type=int, default=0)
    ap.add_argument("--resume", default="", help="checkpoint (same config) to start phase B from; skips phase A")
    ap.add_argument("--world", type=int, default=1,
                    help="data-parallel processes (one per core; gradients averaged over gloo on 127.0.0.1)")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--port", type=int, default=29517, help="loopback port of the process group (--world > 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # each process draws its own images; the model starts identical (init_weights seeds its own generator)
    rng = np.random.RandomState(args.seed + 1000 * args.rank)
    lead = args.rank == 0
    if args.world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % args.port, rank=args.rank,
                                world_size=args.world)
    os.makedirs(args.work, exist_ok=True)
    cmd = " ".join(sys.argv)

    parts = [np.load(c + ".npy", mmap_mode="r") for c in args.cache.split(",")]
    metas = [m for c in args.cache.split(",") for m in json.load(open(c + ".json"))]
    imgs = np.concatenate(parts)
    n = min(len(imgs), len(metas))
    imgs = np.ascontiguousarray(imgs[:n])
    if imgs.shape[1] != args.size:
        from PIL import Image
        imgs = np.stack([np.asarray(Image.fromarray(np.asarray(a)).resize((args.size, args.size), Image.BICUBIC)) for a in imgs])
    metas = metas[:n]
    print("training images:", n, flush=True)

    tok_dir = os.path.join(args.work, "tokenizer")
    if args.world > 1 and not lead:
        dist.barrier()  # rank 0 has written the tokenizer and config.json
    if args.resume or not lead:
        import shutil
        import sentencepiece as spm
        src = os.path.dirname(os.path.abspath(args.resume)) if args.resume else args.work
        if os.path.abspath(src) != os.path.abspath(args.work):
            shutil.copytree(os.path.join(src, "tokenizer"), tok_dir, dirs_exist_ok=True)
            shutil.copy(os.path.join(src, "config.json"), os.path.join(args.work, "config.json"))
        sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "tokenizer.model"))
        added = {s: sp.piece_to_id(s) for s in USER_SYMBOLS}
        added.update(json.load(open(os.path.join(tok_dir, "added_tokens.json"))))
        tok = R.SpRefTokenizer(sp, added, False, 1)
        cfg = json.load(open(os.path.join(args.work, "config.json")))
    else:
        tok, vocab = build_tokenizer(tok_dir, instruct.corpus_lines(metas, np.random.RandomState(7)), args.vocab)
        cfg = make_config(vocab, tok.added["<|im_end|>"], args)
        with open(os.path.join(args.work, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1, ensure_ascii=False)
        if args.world > 1:
            dist.barrier()
    model = R.InternVLChat(cfg)
    init_weights(model, args.seed)
    gpatch = args.size // args.patch
    centres = token_centres(gpatch, cfg.get("ps_version", "v1"))
    aux = AuxHead(cfg["llm_config"]["hidden_size"], centres, gpatch)
    step0, el0, ema = 0, 0.0, None
    if args.resume:
        ck = torch.load(args.resume)
        model.load_state_dict(ck["model"])
        if "aux" in ck:
            aux.load_state_dict(ck["aux"])
        step0, el0, ema = ck["step"], ck["elapsed"], ck["ema"]
        print("resumed from %s (step %d, %.0f s)" % (args.resume, step0, el0), flush=True)
    if args.world > 1:  # identical start on every process
        for t_ in list(model.state_dict().values()) + list(aux.state_dict().values()):
            dist.broadcast(t_, 0)
    vocab = cfg["llm_config"]["vocab_size"]
    T = len(centres)
    print("params:", sum(p.numel() for p in model.parameters()), "vocab:", vocab, "image tokens:", T, flush=True)

    # aux targets for each image, unflipped and flipped
    flipped = [instruct.flip_findings(m["findings"]) for m in metas]
    tg = [[aux_targets(m["findings"], centres) for m in metas], [aux_targets(f, centres) for f in flipped]]
    OBJ = np.stack([np.stack([t[0] for t in tg[k]]) for k in (0, 1)])  # (2, N, T, NL)
    BOX = np.stack([np.stack([t[1] for t in tg[k]]) for k in (0, 1)])  # (2, N, T, NL, 4)

    def batch_images(k):
        idx = rng.randint(0, n, size=k)
        fl = rng.rand(k) < 0.5
        b = imgs[idx].copy()
        b[fl] = b[fl][:, :, ::-1]
        pix = augment(to_pixels(np.ascontiguousarray(b)), rng)
        fi = fl.astype(int)
        return idx, fl, pix, torch.from_numpy(OBJ[fi, idx]), torch.from_numpy(BOX[fi, idx])

    logf = open(os.path.join(args.work, "loss.tsv" if lead else "loss.rank%d.tsv" % args.rank), "a")
    evalf = open(os.path.join(args.work, "eval.log" if lead else os.devnull), "a")
    budget = args.minutes * 60
    paused = 0.0
    t0 = time.time()
    step = 0

    def elapsed():
        return time.time() - t0 - paused + el0

    def shared(x):
        """rank 0's value of x on every process: the clock that drives the lr schedule and the stop"""
        if args.world == 1:
            return x
        t_ = torch.tensor([float(x)], dtype=torch.float64)
        dist.broadcast(t_, 0)
        return float(t_)

    def average_grads(ps):
        if args.world == 1:
            return
        gs = [p_.grad if p_.grad is not None else torch.zeros_like(p_) for p_ in ps]
        flat = torch.cat([g_.reshape(-1) for g_ in gs])
        dist.all_reduce(flat)
        flat /= args.world
        o_ = 0
        for p_, g_ in zip(ps, gs):
            p_.grad = flat[o_:o_ + g_.numel()].view_as(g_).clone()
            o_ += g_.numel()

    def optimiser_step(opt, total, ps):
        """one update from the loss: every process applies the same averaged, clipped gradient"""
        opt.zero_grad()
        total.backward()
        average_grads(ps)
        torch.nn.utils.clip_grad_norm_(ps, 1.0)
        opt.step()

    def save(name="ckpt.pt"):
        if not lead:
            return
        torch.save({"model": model.state_dict(), "aux": aux.state_dict(), "step": step + step0, "elapsed": elapsed(),
                    "ema": ema, "cmd": cmd, "seed": args.seed}, os.path.join(args.work, name + ".tmp"))
        os.replace(os.path.join(args.work, name + ".tmp"), os.path.join(args.work, name))

    def run_eval():
        nonlocal paused
        if not lead:
            return
        te = time.time()
        save()
        out = os.path.join(args.work, "eval_model")
        r = subprocess.run([sys.executable, os.path.join(HERE, "export.py"), args.work, out], capture_output=True, text=True)
        text = r.stdout + r.stderr
        if args.eval_cmd:
            r = subprocess.run(args.eval_cmd, shell=True, capture_output=True, text=True,
                               env=dict(os.environ, CKPT_DIR=out))
            text += r.stdout[-3000:] + r.stderr[-2000:]
        evalf.write("== step %d, %.0f s\n%s\n" % (step + step0, elapsed(), text))
        evalf.flush()
        print(text, flush=True)
        paused += time.time() - te

    last_ck = last_ev = time.time()

    # ---------------------------------------------------------------- phase A
    if not args.resume:
        vit_params = list(model.vision_model.parameters()) + list(model.mlp1.parameters()) + list(aux.parameters())
        opt = torch.optim.AdamW(vit_params, lr=args.vit_lr, betas=(0.9, 0.98), weight_decay=0.01)
        budget_a = args.vit_minutes * 60
        ta = time.time()
        while True:
            el = shared(time.time() - ta)
            if el > budget_a or (args.vit_max_steps and step >= args.vit_max_steps):
                break
            lr = args.vit_lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * el / budget_a)))
            for gp in opt.param_groups:
                gp["lr"] = lr
            idx, fl, pix, obj, box = batch_images(args.vit_imgs)
            tokens = vision_tokens(model, pix, cfg, gpatch)
            l_obj, l_box = aux.loss(tokens, obj, box)
            optimiser_step(opt, l_obj * 5 + l_box, vit_params)
            step += 1
            logf.write("%d\tA\t%.1f\t%.5f\t%.5f\t%.6f\n" % (step + step0, elapsed(), float(l_obj), float(l_box), lr))
            if step % 20 == 0:
                logf.flush()
                print("A step %d t=%.0fs obj %.4f box %.4f lr %.5f" % (step, elapsed(), float(l_obj), float(l_box), lr),
                      flush=True)
        save("ckpt_vit.pt")
        print("phase A: %d steps, %.0f s" % (step, elapsed()), flush=True)
        if args.held and lead:
            te = time.time()
            r = subprocess.run([sys.executable, os.path.join(HERE, "eval_aux.py"), args.work,
                                os.path.join(args.work, "ckpt_vit.pt"), args.held], capture_output=True, text=True)
            evalf.write("== phase A aux head, step %d\n%s%s\n" % (step, r.stdout, r.stderr[-2000:]))
            evalf.flush()
            print(r.stdout, r.stderr[-2000:], flush=True)
            paused += time.time() - te

    # ---------------------------------------------------------------- phase B
    if args.mix:
        instruct.MIX[:] = [float(x) for x in args.mix.split(",")]
    digit_ids = set(tok.sp.piece_to_id(str(d)) for d in range(10))
    n_img_tok = T
    img_ctx = tok.added["<IMG_CONTEXT>"]
    lm = model.language_model
    params = list(model.parameters()) + list(aux.parameters())
    vis = list(model.vision_model.parameters()) + list(model.mlp1.parameters()) + list(aux.parameters())
    vis_ids = set(id(p_) for p_ in vis)
    opt = torch.optim.AdamW([{"params": [p_ for p_ in params if id(p_) not in vis_ids], "f": 1.0},
                             {"params": vis, "f": args.vis_lr_factor}],
                            lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    enc_cache = {}

    def enc(s):
        v = enc_cache.get(s)
        if v is None:
            v = enc_cache[s] = tok.encode(s)
        return v

    startb = shared(elapsed())
    stepb = 0
    while True:
        el = shared(elapsed())
        if el > budget or (args.max_steps and stepb >= args.max_steps):
            break
        prog = min(1.0, (el - startb) / max(1.0, budget - startb))
        lr = args.lr * min(1.0, (stepb + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))
        for gp in opt.param_groups:
            gp["lr"] = lr * gp["f"]
        idx, fl, pix, obj, box = batch_images(args.imgs)
        seqs = []
        for bi, i in enumerate(idx):
            m = metas[i]
            f = flipped[i] if fl[bi] else m["findings"]
            for _ in range(args.qa):
                q, a = instruct.sample(rng, m["modality"], f)
                p = enc(R.build_prompt(q, SYS_MSG, n_img_tok))
                ans = enc(a) + [tok.added["<|im_end|>"]]
                seqs.append((bi, p, ans))
        vit = vision_tokens(model, pix, cfg, gpatch)
        # sequences sorted by length, in chunks padded separately (less padding)
        seqs.sort(key=lambda s_: len(s_[1]) + len(s_[2]))
        nch = max(1, args.chunks)
        cs = (len(seqs) + nch - 1) // nch
        ce_sum, w_sum, L = 0.0, 0.0, 0
        for c0 in range(0, len(seqs), cs):
            chunk = seqs[c0:c0 + cs]
            Lc = max(len(p) + len(a) for _, p, a in chunk)
            L = max(L, Lc)
            ids = torch.zeros(len(chunk), Lc, dtype=torch.long)
            tgt = torch.full((len(chunk), Lc), -100, dtype=torch.long)
            img_of = torch.tensor([bi for bi, _, _ in chunk])
            for k, (_, p, a) in enumerate(chunk):
                full = p + a
                ids[k, :len(full)] = torch.tensor(full)
                tgt[k, len(p) - 1:len(full) - 1] = torch.tensor(a)
            emb = lm.embed(ids)
            sel = ids == img_ctx
            emb = emb.masked_scatter(sel.unsqueeze(-1), vit[img_of].reshape(-1, vit.shape[-1]))
            logits = lm(emb)
            tflat = tgt.reshape(-1)
            keep = tflat != -100
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1])[keep], tflat[keep], reduction="none")
            tk = tflat[keep]
            isd = torch.zeros_like(tk, dtype=torch.bool)
            for d in digit_ids:
                isd |= tk == d
            tw = torch.where(isd, torch.tensor(args.digit_weight), torch.tensor(1.0))
            ce_sum = ce_sum + (ce * tw).sum()
            w_sum += float(tw.sum())
        loss = ce_sum / w_sum
        if args.aux_weight > 0:
            l_obj, l_box = aux.loss(vit, obj, box)
            aux_loss = l_obj * 5 + l_box
        else:
            aux_loss = torch.tensor(0.0)
        optimiser_step(opt, loss + args.aux_weight * aux_loss, params)
        step += 1
        stepb += 1
        lv = float(loss)
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        logf.write("%d\tB\t%.1f\t%.5f\t%.5f\t%.6f\t%.5f\n" % (step + step0, elapsed(), lv, ema, lr, float(aux_loss)))
        if step % 10 == 0:
            logf.flush()
            print("B step %d t=%.0fs loss %.4f ema %.4f aux %.4f lr %.5f seqlen %d" % (
                step + step0, elapsed(), lv, ema, float(aux_loss), lr, L), flush=True)
        if lead and time.time() - last_ck > args.ckpt_minutes * 60:
            save()
            last_ck = time.time()
        if shared(bool(args.eval_minutes) and time.time() - last_ev > args.eval_minutes * 60):
            run_eval()
            last_ev = time.time()
    logf.flush()
    save()
    print("done: %d steps, %.0f s of training (%.0f s paused for evaluation)" % (step, elapsed(), paused), flush=True)


if __name__ == "__main__":
    main()
