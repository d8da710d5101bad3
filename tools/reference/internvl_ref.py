#!/usr/bin/python3
"""Independent PyTorch reference for firstread's engine.

Builds small random-weight InternVL-Chat models in the authors' directory
layout (config.json, model.safetensors, tokenizer files) and writes what the
published modelling code would compute for them: preprocessed pixels, vision
embeddings, the logits of the first generated position and the greedy ids.

The model code follows OpenGVLab/InternVL (internvl_chat/internvl/model/
internvl_chat: modeling_intern_vit.py, modeling_internvl_chat.py), the Hugging
Face LLaMA / Qwen2 modelling code, and InternLM2's modelling_internlm2.py;
preprocessing follows internvl/train/dataset.py (build_transform,
dynamic_preprocess, expand2square). It is deliberately written without
sharing anything with the C++ engine: no KV cache (every step re-runs the
whole sequence), plain torch ops, PIL for resizing, python-sentencepiece and a
separate Python byte-level BPE for tokenizing.

Usage: internvl_ref.py OUT_DIR [--configs v12,1b,2b|seed] [--dtype f32|bf16] [--new-tokens N]
                       [--seed-layers V,D]   (seed: MedRegA widths, V ViT + D decoder layers)
       internvl_ref.py --bench OUT_DIR ...   (see bench_ref.py)
"""
import io
import json
import math
import os
import struct
import sys
import unicodedata

import numpy as np
import regex
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

torch.set_grad_enabled(False)

# --------------------------------------------------------------------------- safetensors


def write_safetensors(path, tensors, dtype="F32"):
    """Minimal safetensors writer: sorted names, 8-byte aligned header. Tensors
    are converted and written one at a time (a seed-width model is GBs)."""
    size = {"F32": 4, "BF16": 2, "F16": 2}[dtype]
    header, off = {}, 0
    for name in sorted(tensors):
        n = int(np.prod(tensors[name].shape)) * size
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name in sorted(tensors):
            t = tensors[name].detach().contiguous()
            if dtype == "F32":
                raw = t.to(torch.float32).numpy().tobytes()
            elif dtype == "BF16":
                raw = t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
            else:
                raw = t.to(torch.float16).numpy().tobytes()
            assert len(raw) == header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            f.write(raw)


# --------------------------------------------------------------------------- corpus

CORPUS = [
    "The chest x-ray shows a small nodule in the right upper lobe, about 12 mm.",
    "No pleural effusion. Heart size is normal. 心影大小正常，双肺纹理清晰。",
    "Please locate <ref>carotid vessel wall</ref> in this MRI scan.",
    "What is <ref>this</ref><box>[[421, 351, 505, 470]]</box> in this CT scan?",
    "<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>, <ref>left lung</ref><box>[[520, 98, 899, 915]]</box>: clear.",
    "请定位并描述这张医学影像中的<ref>胰腺癌</ref>",
    "<ref>胰腺癌</ref><box>[[661, 528, 743, 599]]</box>：胰头部低密度肿块，边界不清。",
    "Impression: 1. Mild cardiomegaly. 2. Bibasilar atelectasis. 3. No pneumothorax.",
    "Findings:   multiple    spaces\tand\ttabs\n\nnew lines   \n  end.",
    "Patient aged 67, BP 135/85 mmHg, SpO2 97%, temperature 37.2°C.",
    "肝脏大小形态正常，实质密度均匀，未见明确占位。胆囊不大，壁不厚。",
    "The lesion measures 3.4 x 2.1 cm (previously 2.9 x 1.8 cm) — interval growth.",
    "Emoji test 🙂🫁 and symbols ±≤≥ µm ° — done.",
    "You are a helpful medical assistant. Your task is object detection.",
    "The region is represented in the form of bounding box, [x1, y1, x2, y2], with integers ranging from 0 to 999.",
    "右肺上叶见一结节影，大小约1.2cm×1.0cm，边缘可见毛刺。",
    "Cardiomediastinal silhouette within normal limits; lungs are clear bilaterally.",
    "It's the patient's 2nd visit; they've had CT, MRI and PET/CT since 2019-03-14.",
]

TOKENIZER_TEST_TEXTS = CORPUS + [
    "  leading spaces and trailing   ",
    "<box>[[12, 340, 560, 999]]</box>",
    "数字 0123456789 和 ０１２ 全角",
    "Café naïve résumé (NFC: e\u0301 vs é)",
    "",
    "\n\n\n",
    "a" * 40,
    "Mixed: 左肺下叶 lower lobe 🫁🙂 <ref>结节</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>",
]

SPECIAL_CHAT = ["<|im_start|>", "<|im_end|>"]
IMG_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]

# --------------------------------------------------------------------------- SentencePiece


def build_sentencepiece(out_dir, vocab_size, user_symbols):
    import sentencepiece as spm

    buf = io.BytesIO()
    lines = CORPUS * 3
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, user_defined_symbols=user_symbols,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        hard_vocab_limit=False)
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(buf.getvalue())
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


class SpRefTokenizer:
    """HF slow LlamaTokenizer behaviour (legacy): split on added tokens, SentencePiece per piece."""

    def __init__(self, sp, added, add_bos, bos_id):
        self.sp, self.added, self.add_bos, self.bos_id = sp, added, add_bos, bos_id

    def encode(self, text, add_special=False):
        ids = [self.bos_id] if add_special and self.add_bos else []
        for seg, tid in split_added(text, self.added):
            if tid is not None:
                ids.append(tid)
            elif seg:
                ids += self.sp.encode(seg)
        return ids


def split_added(text, added):
    """Earliest, then longest, occurrence of an added token; yields (text, None) / (None, id)."""
    toks = sorted(added.items(), key=lambda kv: -len(kv[0]))
    out, start, pos = [], 0, 0
    while pos < len(text):
        hit = None
        for s, i in toks:
            if text.startswith(s, pos):
                hit = (s, i)
                break
        if hit is None:
            pos += 1
            continue
        if pos > start:
            out.append((text[start:pos], None))
        out.append((None, hit[1]))
        pos += len(hit[0])
        start = pos
    if start < len(text):
        out.append((text[start:], None))
    return out


# --------------------------------------------------------------------------- byte-level BPE

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class BpeRefTokenizer:
    def __init__(self, vocab, merges, added):
        self.vocab, self.added = vocab, added
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.b2u = bytes_to_unicode()
        self.u2b = {v: k for k, v in self.b2u.items()}
        self.pat = regex.compile(QWEN2_PATTERN)

    def bpe(self, word):
        syms = list(word)
        while len(syms) > 1:
            pairs = [(self.ranks.get((syms[i], syms[i + 1]), 1 << 30), i) for i in range(len(syms) - 1)]
            best = min(pairs)
            if best[0] == 1 << 30:
                break
            a, b = syms[best[1]], syms[best[1] + 1]
            merged, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(syms[i])
                    i += 1
            syms = merged
        return syms

    def encode(self, text, add_special=False):
        ids = []
        for seg, tid in split_added(text, self.added):
            if tid is not None:
                ids.append(tid)
                continue
            seg = unicodedata.normalize("NFC", seg)
            for piece in self.pat.findall(seg):
                word = "".join(self.b2u[b] for b in piece.encode("utf-8"))
                ids += [self.vocab[s] for s in self.bpe(word)]
        return ids


def train_bpe(texts, n_merges):
    b2u = bytes_to_unicode()
    pat = regex.compile(QWEN2_PATTERN)
    words = {}
    for t in texts:
        for piece in pat.findall(unicodedata.normalize("NFC", t)):
            w = tuple(b2u[b] for b in piece.encode("utf-8"))
            words[w] = words.get(w, 0) + 1
    vocab = {}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    merges = []
    words = {w: c for w, c in words.items()}
    for _ in range(n_merges):
        counts = {}
        for w, c in words.items():
            for i in range(len(w) - 1):
                counts[(w[i], w[i + 1])] = counts.get((w[i], w[i + 1]), 0) + c
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])
        if counts[best] < 2:
            break
        merges.append(best)
        vocab[best[0] + best[1]] = len(vocab)
        nw = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nw[tuple(out)] = nw.get(tuple(out), 0) + c
        words = nw
    return vocab, merges


def build_bpe(out_dir):
    vocab, merges = train_bpe(CORPUS * 2, 350)
    added = {}
    for s in ["<|endoftext|>"] + SPECIAL_CHAT + IMG_TOKENS:
        added[s] = len(vocab) + len(added)
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True} for s, i in added.items()
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [a + " " + b for a, b in merges]},
    }
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    # The slow-tokenizer files Qwen2Tokenizer reads (some InternVL2 repos ship only these).
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(a + " " + b + "\n" for a, b in merges))
    with open(os.path.join(out_dir, "added_tokens.json"), "w", encoding="utf-8") as f:
        json.dump(added, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "bos_token": None,
                   "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "additional_special_tokens": SPECIAL_CHAT}, f, ensure_ascii=False)
    return BpeRefTokenizer(vocab, merges, added), len(vocab) + len(added)


# --------------------------------------------------------------------------- preprocessing (internvl/train/dataset.py)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def expand2square(pil_img, background_color):
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def dynamic_preprocess(image, min_num=1, max_num=6, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    target_ratios = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                        if i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    target_aspect_ratio = find_closest_aspect_ratio(aspect_ratio, target_ratios, orig_width, orig_height, image_size)
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = ((i % (target_width // image_size)) * image_size, (i // (target_width // image_size)) * image_size,
               ((i % (target_width // image_size)) + 1) * image_size, ((i // (target_width // image_size)) + 1) * image_size)
        processed_images.append(resized_img.crop(box))
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size)))
    return processed_images


def transform(img, input_size, pad2square):
    # build_transform(is_train=False): RGB -> [expand2square] -> Resize BICUBIC -> ToTensor -> Normalize
    img = img.convert("RGB")
    if pad2square:
        img = expand2square(img, tuple(int(x * 255) for x in MEAN))
    img = img.resize((input_size, input_size), Image.BICUBIC)
    t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return (t - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def load_pixels(img, cfg):
    size = cfg["force_image_size"] or cfg["vision_config"]["image_size"]
    if cfg.get("dynamic_image_size", False):
        tiles = dynamic_preprocess(img, min_num=cfg.get("min_dynamic_patch", 1), max_num=cfg.get("max_dynamic_patch", 6),
                                   image_size=size, use_thumbnail=cfg.get("use_thumbnail", False))
    else:
        tiles = [img]
    return torch.stack([transform(t, size, cfg.get("pad2square", False)) for t in tiles])


def make_test_image(w, h, seed):
    """Deterministic synthetic image: gradients, a bright disc, stripes, noise."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    g = 255 * x / max(w - 1, 1)
    b = 255 * y / max(h - 1, 1)
    disc = ((x - w * 0.6) ** 2 + (y - h * 0.4) ** 2) < (min(w, h) * 0.2) ** 2
    img = np.stack([r, g, b], -1)
    img[disc] = [250, 240, 230]
    img[:, ::9] = img[:, ::9] * 0.3
    img += rng.randint(-20, 21, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- InternViT (modeling_intern_vit.py)


class InternRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def make_norm(kind, d, eps):
    return InternRMSNorm(d, eps) if kind == "rms_norm" else nn.LayerNorm(d, eps=eps)


class InternVisionEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_dim, self.image_size, self.patch_size = c["hidden_size"], c["image_size"], c["patch_size"]
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(3, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Parameter(torch.randn(1, self.num_positions, self.embed_dim))

    def _get_pos_embed(self, pos_embed, H, W):
        target_dtype = pos_embed.dtype
        pos_embed = pos_embed.float().reshape(1, self.image_size // self.patch_size, self.image_size // self.patch_size,
                                              -1).permute(0, 3, 1, 2)
        pos_embed = F.interpolate(pos_embed, size=(H, W), mode="bicubic", align_corners=False)
        return pos_embed.reshape(1, -1, H * W).permute(0, 2, 1).to(target_dtype)

    def forward(self, pixel_values):
        patch_embeds = self.patch_embedding(pixel_values)
        batch_size, _, height, width = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        class_embeds = self.class_embedding.expand(batch_size, 1, -1)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        position_embedding = torch.cat([self.position_embedding[:, :1, :],
                                        self._get_pos_embed(self.position_embedding[:, 1:, :], height, width)], dim=1)
        return embeddings + position_embedding


class InternAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_dim, self.num_heads = c["hidden_size"], c["num_attention_heads"]
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=c.get("qkv_bias", False))
        self.qk_normalization = c.get("qk_normalization", True)
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(self.embed_dim, eps=c.get("layer_norm_eps", 1e-6))
            self.k_norm = InternRMSNorm(self.embed_dim, eps=c.get("layer_norm_eps", 1e-6))
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.qk_normalization:
            B_, H_, N_, D_ = q.shape
            q = self.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(B_, N_, H_, D_).transpose(1, 2)
            k = self.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(B_, N_, H_, D_).transpose(1, 2)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class InternMLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Linear(c["hidden_size"], c["intermediate_size"])
        self.fc2 = nn.Linear(c["intermediate_size"], c["hidden_size"])

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, kind, eps = c["hidden_size"], c.get("norm_type", "rms_norm"), c.get("layer_norm_eps", 1e-6)
        self.attn = InternAttention(c)
        self.mlp = InternMLP(c)
        self.norm1 = make_norm(kind, d, eps)
        self.norm2 = make_norm(kind, d, eps)
        self.ls1 = nn.Parameter(0.5 * torch.ones(d))
        self.ls2 = nn.Parameter(0.5 * torch.ones(d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x)) * self.ls1
        x = x + self.mlp(self.norm2(x)) * self.ls2
        return x


class InternVisionModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = InternVisionEmbeddings(c)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([InternVisionEncoderLayer(c) for _ in range(c["num_hidden_layers"])])

    def forward(self, pixel_values):
        hidden = [self.embeddings(pixel_values)]
        for layer in self.encoder.layers:
            hidden.append(layer(hidden[-1]))
        return hidden  # hidden_states tuple: embeddings, then each layer


def pixel_shuffle(x, scale_factor=0.5, ps_version="v1"):
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    if ps_version != "v1":
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


# --------------------------------------------------------------------------- decoders (HF LLaMA / Qwen2 / InternLM2)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        v = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(dim, base, seq_len):
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    t = torch.arange(seq_len, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class Decoder(nn.Module):
    """One module for the three layouts; parameter names follow each family."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.arch = c["architectures"][0]
        d, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
        self.H, self.KV = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = d // self.H
        eps = c["rms_norm_eps"]
        self.model = nn.Module()
        self.model.layers = nn.ModuleList()
        ilm = self.arch == "InternLM2ForCausalLM"
        qwen = self.arch == "Qwen2ForCausalLM"
        if ilm:
            self.model.tok_embeddings = nn.Embedding(V, d)
        else:
            self.model.embed_tokens = nn.Embedding(V, d)
        for _ in range(c["num_hidden_layers"]):
            L = nn.Module()
            if ilm:
                L.attention = nn.Module()
                L.attention.wqkv = nn.Linear(d, (self.H + 2 * self.KV) * self.hd, bias=c.get("bias", True))
                L.attention.wo = nn.Linear(self.H * self.hd, d, bias=c.get("bias", True))
                L.feed_forward = nn.Module()
                L.feed_forward.w1 = nn.Linear(d, I, bias=False)
                L.feed_forward.w3 = nn.Linear(d, I, bias=False)
                L.feed_forward.w2 = nn.Linear(I, d, bias=False)
                L.attention_norm = RMSNorm(d, eps)
                L.ffn_norm = RMSNorm(d, eps)
            else:
                L.self_attn = nn.Module()
                L.self_attn.q_proj = nn.Linear(d, self.H * self.hd, bias=qwen)
                L.self_attn.k_proj = nn.Linear(d, self.KV * self.hd, bias=qwen)
                L.self_attn.v_proj = nn.Linear(d, self.KV * self.hd, bias=qwen)
                L.self_attn.o_proj = nn.Linear(self.H * self.hd, d, bias=False)
                L.mlp = nn.Module()
                L.mlp.gate_proj = nn.Linear(d, I, bias=False)
                L.mlp.up_proj = nn.Linear(d, I, bias=False)
                L.mlp.down_proj = nn.Linear(I, d, bias=False)
                L.input_layernorm = RMSNorm(d, eps)
                L.post_attention_layernorm = RMSNorm(d, eps)
            self.model.layers.append(L)
        self.model.norm = RMSNorm(d, eps)
        if ilm:
            self.output = nn.Linear(d, V, bias=False)
        elif not c.get("tie_word_embeddings", False):
            self.lm_head = nn.Linear(d, V, bias=False)

    def embed(self, ids):
        e = self.model.tok_embeddings if self.arch == "InternLM2ForCausalLM" else self.model.embed_tokens
        return e(ids)

    def head(self, x):
        if self.arch == "InternLM2ForCausalLM":
            return self.output(x)
        if self.c.get("tie_word_embeddings", False):
            return x @ self.model.embed_tokens.weight.t()
        return self.lm_head(x)

    def forward(self, x):
        """x: (1, N, d) input embeddings; returns logits (1, N, V). Causal, no cache."""
        B, N, _ = x.shape
        cos, sin = rope_cos_sin(self.hd, self.c.get("rope_theta", 10000.0), N)
        mask = torch.full((N, N), float("-inf")).triu(1)
        group = self.H // self.KV
        for L in self.model.layers:
            if self.arch == "InternLM2ForCausalLM":
                h = L.attention_norm(x)
                qkv = L.attention.wqkv(h).view(B, N, self.KV, group + 2, self.hd)  # 'b q (h gs d)'
                q = qkv[..., :group, :].reshape(B, N, self.H, self.hd)
                k, v = qkv[..., -2, :], qkv[..., -1, :]
            else:
                h = L.input_layernorm(x)
                q = L.self_attn.q_proj(h).view(B, N, self.H, self.hd)
                k = L.self_attn.k_proj(h).view(B, N, self.KV, self.hd)
                v = L.self_attn.v_proj(h).view(B, N, self.KV, self.hd)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
            att = (q @ k.transpose(2, 3)) / math.sqrt(self.hd) + mask
            att = att.float().softmax(-1)
            o = (att @ v).transpose(1, 2).reshape(B, N, self.H * self.hd)
            if self.arch == "InternLM2ForCausalLM":
                x = x + L.attention.wo(o)
                h = L.ffn_norm(x)
                x = x + L.feed_forward.w2(F.silu(L.feed_forward.w1(h)) * L.feed_forward.w3(h))
            else:
                x = x + L.self_attn.o_proj(o)
                h = L.post_attention_layernorm(x)
                x = x + L.mlp.down_proj(F.silu(L.mlp.gate_proj(h)) * L.mlp.up_proj(h))
        return self.head(self.model.norm(x))


class InternVLChat(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        vc, lc = cfg["vision_config"], cfg["llm_config"]
        self.vision_model = InternVisionModel(vc)
        self.language_model = Decoder(lc)
        vit_hidden, llm_hidden = vc["hidden_size"], lc["hidden_size"]
        self.mlp1 = nn.Sequential(nn.LayerNorm(vit_hidden * 4), nn.Linear(vit_hidden * 4, llm_hidden), nn.GELU(),
                                  nn.Linear(llm_hidden, llm_hidden))
        self.select_layer = cfg.get("select_layer", -1)
        self.ps_version = cfg.get("ps_version", "v1")

    def extract_feature(self, pixel_values):
        hidden = self.vision_model(pixel_values)
        vit_embeds = hidden[-1] if self.select_layer == -1 else hidden[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = pixel_shuffle(vit_embeds, 0.5, self.ps_version)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.mlp1(vit_embeds)


def randomise(model, seed):
    """Deterministic random weights of useful scale (norm weights near 1, biases small)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if name.endswith("bias"):
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
        elif name.endswith(".ls1") or name.endswith(".ls2"):
            p.copy_(0.3 + 0.5 * torch.rand(p.shape, generator=g))
        elif p.dim() == 1:  # norm weights (RMSNorm, LayerNorm, qk-norm, mlp1.0)
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif any(k in name for k in ("embed_tokens", "tok_embeddings", "class_embedding", "position_embedding")):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
        else:
            fan_in = int(np.prod(p.shape[1:]))
            # Residual-branch outputs a little larger than the embedding so the
            # random decoder does not just echo its last input token.
            gain = 3.0 if any(k in name for k in ("o_proj", "down_proj", ".wo.", ".w2.")) else 1.0
            p.copy_(gain * torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


# --------------------------------------------------------------------------- configurations

HERMES_SYS_V12 = "Answer the questions."
INTERNVL2_SYS = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"


def vision_cfg(**kw):
    c = {"architectures": ["InternVisionModel"], "hidden_size": 64, "intermediate_size": 128,
         "num_attention_heads": 4, "num_hidden_layers": 3, "image_size": 224, "patch_size": 14,
         "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "drop_path_rate": 0.0}
    c.update(kw)
    return c


def llm_cfg(arch, vocab, **kw):
    c = {"architectures": [arch], "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": vocab, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "max_position_embeddings": 4096, "hidden_act": "silu"}
    c.update(kw)
    return c


def build_config(name, out_dir):
    """Writes tokenizer files and returns (config dict, reference tokenizer, system message, image)."""
    if name == "v12":
        # V1-2 / MedRegA / MedDr lineage: RMSNorm ViT + qk-norm, ps v1 (key absent), LLaMA, SentencePiece
        sp = build_sentencepiece(out_dir, 480, SPECIAL_CHAT + ["<img>", "</img>"])
        n = sp.get_piece_size()
        added = {s: sp.piece_to_id(s) for s in SPECIAL_CHAT + ["<img>", "</img>"]}
        extra = {s: n + i for i, s in enumerate([t for t in IMG_TOKENS if t not in ("<img>", "</img>")])}
        with open(os.path.join(out_dir, "added_tokens.json"), "w") as f:
            json.dump(extra, f)
        added.update(extra)
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
                       "legacy": True, "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>"}, f)
        tok = SpRefTokenizer(sp, added, False, 1)
        vocab = n + len(extra)
        vc = vision_cfg(qkv_bias=False, qk_normalization=True)  # norm_type absent -> rms_norm
        cfg = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "vision_config": vc,
               "llm_config": llm_cfg("LlamaForCausalLM", vocab, rope_theta=5000000.0, eos_token_id=added["<|im_end|>"]),
               "downsample_ratio": 0.5, "select_layer": -1, "template": "Hermes-2", "force_image_size": 224,
               "dynamic_image_size": False, "use_thumbnail": False, "pad2square": True}
        return cfg, tok, HERMES_SYS_V12, make_test_image(200, 150, 1)
    if name == "seed":
        # MedRegA's widths (InternVL-Chat-V1-2: InternViT-6B-448px-V1-2 + Nous-Hermes-2-Yi-34B, the V1-2
        # layout and defaults) cut to SEED_LAYERS layers each, with the small test tokenizer (so the
        # embedding and head are 490 rows, not 64007): the real per-layer cost at 448 px.
        sp = build_sentencepiece(out_dir, 480, SPECIAL_CHAT + ["<img>", "</img>"])
        n = sp.get_piece_size()
        added = {s: sp.piece_to_id(s) for s in SPECIAL_CHAT + ["<img>", "</img>"]}
        extra = {s: n + i for i, s in enumerate([t for t in IMG_TOKENS if t not in ("<img>", "</img>")])}
        with open(os.path.join(out_dir, "added_tokens.json"), "w") as f:
            json.dump(extra, f)
        added.update(extra)
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
                       "legacy": True, "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>"}, f)
        tok = SpRefTokenizer(sp, added, False, 1)
        vocab = n + len(extra)
        vl, dl = SEED_LAYERS
        vc = vision_cfg(hidden_size=3200, intermediate_size=12800, num_attention_heads=25, num_hidden_layers=vl,
                        image_size=448, qkv_bias=False, qk_normalization=True, initializer_factor=0.1)
        lc = llm_cfg("LlamaForCausalLM", vocab, hidden_size=7168, intermediate_size=20480, num_attention_heads=56,
                     num_key_value_heads=8, num_hidden_layers=dl, rope_theta=5000000.0,
                     eos_token_id=added["<|im_end|>"], bos_token_id=1, tie_word_embeddings=False)
        cfg = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "vision_config": vc,
               "llm_config": lc, "downsample_ratio": 0.5, "select_layer": -1, "template": "Hermes-2",
               "force_image_size": 448, "dynamic_image_size": False, "use_thumbnail": False, "pad2square": False,
               "torch_dtype": "bfloat16"}
        return cfg, tok, HERMES_SYS_V12, make_test_image(640, 512, 4)
    if name == "1b":
        tok, vocab = build_bpe(out_dir)
        vc = vision_cfg(qkv_bias=True, qk_normalization=False, norm_type="layer_norm", num_hidden_layers=2)
        cfg = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "vision_config": vc,
               "llm_config": llm_cfg("Qwen2ForCausalLM", vocab, num_attention_heads=8, num_key_value_heads=2,
                                     rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True),
               "downsample_ratio": 0.5, "select_layer": -1, "template": "Hermes-2", "force_image_size": 224,
               "ps_version": "v2", "dynamic_image_size": True, "use_thumbnail": True, "max_dynamic_patch": 4,
               "min_dynamic_patch": 1}
        return cfg, tok, INTERNVL2_SYS, make_test_image(300, 150, 2)
    if name == "2b":
        sp = build_sentencepiece(out_dir, 470, SPECIAL_CHAT)
        n = sp.get_piece_size()
        added = {s: sp.piece_to_id(s) for s in SPECIAL_CHAT}
        extra = {s: n + i for i, s in enumerate(IMG_TOKENS)}
        added.update(extra)
        with open(os.path.join(out_dir, "added_tokens.json"), "w") as f:
            json.dump(extra, f)
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "InternLM2Tokenizer", "add_bos_token": True, "bos_token": "<s>",
                       "eos_token": "</s>", "unk_token": "<unk>"}, f)
        tok = SpRefTokenizer(sp, added, True, 1)
        vocab = n + len(extra)
        # Position table for 280 px (20x20) while tiles are 224 px: exercises the bicubic pos-emb path.
        vc = vision_cfg(qkv_bias=True, qk_normalization=False, norm_type="layer_norm", image_size=280)
        cfg = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "vision_config": vc,
               "llm_config": llm_cfg("InternLM2ForCausalLM", vocab, bias=False, rope_theta=1000000.0,
                                     rope_scaling={"type": "dynamic", "factor": 2.0}),
               "downsample_ratio": 0.5, "select_layer": -2, "template": "internlm2-chat", "force_image_size": 224,
               "ps_version": "v2", "dynamic_image_size": False, "use_thumbnail": True, "max_dynamic_patch": 12}
        return cfg, tok, INTERNVL2_SYS, make_test_image(256, 320, 3)
    raise ValueError(name)


SEED_LAYERS = (2, 2)  # vision, decoder layers of the seed-width replica (--seed-layers V,D)
QUESTION = "Please describe <ref>the lesion</ref> and 肺部 findings, with boxes like <box>[[12, 340, 560, 999]]</box>."


def build_prompt(question, sys_msg, n_image_tokens):
    # InternVL2 chat(): prepend '<image>\n', expand it, Hermes-2/internlm2-chat MPT template.
    if "<image>" not in question:
        question = "<image>\n" + question
    question = question.replace("<image>", "<img>" + "<IMG_CONTEXT>" * n_image_tokens + "</img>", 1)
    return ("<|im_start|>system\n" + sys_msg + "<|im_end|>" + "<|im_start|>user\n" + question + "<|im_end|>" +
            "<|im_start|>assistant\n")


def generate_fixture(name, out_dir, dtype="F32", n_new=32):
    os.makedirs(out_dir, exist_ok=True)
    cfg, tok, sys_msg, image = build_config(name, out_dir)
    torch.manual_seed(0)
    model = InternVLChat(cfg).eval()
    randomise(model, seed={"v12": 11, "1b": 22, "2b": 33, "seed": 44}[name])
    sd = model.state_dict()
    if cfg["llm_config"].get("tie_word_embeddings"):
        assert "language_model.lm_head.weight" not in sd
    write_safetensors(os.path.join(out_dir, "model.safetensors"), sd, dtype)
    if dtype != "F32":
        # What the engine computes from: the rounded weights, held in float32.
        for k, v in sd.items():
            v.copy_(v.to(torch.bfloat16 if dtype == "BF16" else torch.float16).float())
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1, ensure_ascii=False)
    image.save(os.path.join(out_dir, "test_image.png"))
    with open(os.path.join(out_dir, "test_image.ppm"), "wb") as f:
        w, h = image.size
        f.write(b"P6\n%d %d\n255\n" % (w, h) + np.asarray(image).tobytes())

    pixels = load_pixels(image, cfg)
    n_tiles = pixels.shape[0]
    vit = model.extract_feature(pixels)  # (tiles, tokens, d_llm)
    n_img_tok = vit.shape[0] * vit.shape[1]
    prompt = build_prompt(QUESTION, sys_msg, n_img_tok)
    ids = tok.encode(prompt, add_special=True)
    img_ctx = tok.added["<IMG_CONTEXT>"]
    stop = tok.added["<|im_end|>"]
    lm = model.language_model
    gen, first_logits = [], None
    seq = list(ids)
    for step in range(n_new):
        emb = lm.embed(torch.tensor([seq]))
        sel = torch.tensor(seq) == img_ctx
        emb[0, sel] = vit.reshape(-1, vit.shape[-1])
        logits = lm(emb)[0, -1]
        if first_logits is None:
            first_logits = logits.clone()
        nxt = int(torch.argmax(logits))
        gen.append(nxt)
        if nxt == stop:
            break
        seq.append(nxt)
    top2 = torch.topk(first_logits, 2).values
    ref = {
        "name": name, "dtype": dtype, "prompt": prompt, "question": QUESTION, "system_message": sys_msg,
        "prompt_ids": ids, "generated_ids": gen, "n_tiles": n_tiles, "image_size": list(image.size),
        "pixel_shape": list(pixels.shape), "vision_shape": list(vit.shape),
        "first_logits": first_logits.tolist(), "first_margin": float(top2[0] - top2[1]),
        "tokenizer_cases": [{"text": t, "ids": tok.encode(t)} for t in TOKENIZER_TEST_TEXTS],
    }
    with open(os.path.join(out_dir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False)
    pixels.numpy().astype(np.float32).tofile(os.path.join(out_dir, "pixel_values.f32"))
    vit.numpy().astype(np.float32).tofile(os.path.join(out_dir, "vision_embeds.f32"))
    return ref


def write_resize_cases(out_dir):
    """PIL BICUBIC resizes of a few sizes (shrink, enlarge, mixed) for the preprocessing test."""
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    src = make_test_image(97, 61, 7)
    src.save(os.path.join(out_dir, "resize_src.png"))
    for i, (w, h) in enumerate([(224, 224), (40, 30), (13, 100), (97, 61), (300, 17), (1, 1)]):
        out = src.resize((w, h), Image.BICUBIC)
        out.save(os.path.join(out_dir, "resize_%d.png" % i))
        cases.append({"w": w, "h": h, "file": "resize_%d.png" % i})
    gray = Image.fromarray((np.arange(50 * 40).reshape(40, 50) % 256).astype(np.uint8), "L")
    with open(os.path.join(out_dir, "gray.pgm"), "wb") as f:
        f.write(b"P5\n50 40\n255\n" + np.asarray(gray).tobytes())
    gray.convert("RGB").save(os.path.join(out_dir, "gray_as_rgb.png"))
    with open(os.path.join(out_dir, "resize_cases.json"), "w") as f:
        json.dump(cases, f)


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    out = argv[1]
    global SEED_LAYERS
    names = ["v12", "1b", "2b"]
    dtype = "F32"
    n_new = 32
    i = 2
    while i < len(argv):
        if argv[i] == "--configs":
            names = argv[i + 1].split(",")
            i += 2
        elif argv[i] == "--dtype":
            dtype = argv[i + 1].upper()
            i += 2
        elif argv[i] == "--seed-layers":
            SEED_LAYERS = tuple(int(x) for x in argv[i + 1].split(","))
            i += 2
        elif argv[i] == "--new-tokens":
            n_new = int(argv[i + 1])
            i += 2
        else:
            print("unknown argument", argv[i])
            return 2
    torch.set_num_threads(2 if names == ["seed"] else 1)
    for n in names:
        ref = generate_fixture(n, os.path.join(out, n), dtype, n_new)
        print("%s: %d prompt ids, %d tiles, generated %d ids, first-logit margin %.4f" % (
            n, len(ref["prompt_ids"]), ref["n_tiles"], len(ref["generated_ids"]), ref["first_margin"]))
    if names != ["seed"]:
        write_resize_cases(os.path.join(out, "resize"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
