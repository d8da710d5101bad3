#!/usr/bin/python3
"""A Hugging Face ViTForImageClassification written from its published layout
in plain PyTorch (Debian's python3-torch; no transformers package), so the
demo's specialists are trained here and saved in the directory layout most
fine-tuned image classifiers are published in:

  config.json               model_type "vit", image_size, patch_size, hidden sizes,
                            id2label / label2id, problem_type
  model.safetensors         HF tensor names (vit.embeddings..., vit.encoder.layer.N...,
                            vit.layernorm, classifier), F32
  preprocessor_config.json  ViTImageProcessor: resize (bicubic), rescale 1/255, mean / std

Forward as HF's modeling_vit (eval mode): patch conv (kernel = stride = patch)
-> [CLS] + patches + position embeddings -> pre-LN blocks (LN -> MHA -> +,
LN -> dense -> GELU (erf) -> dense -> +) -> final LayerNorm -> classifier on
the CLS token. The pooled feature used for retrieval is that CLS token after
the final LayerNorm (what the classifier reads).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import internvl_ref as R  # noqa: E402  (write_safetensors)

MEAN = [0.5, 0.5, 0.5]
STD = [0.5, 0.5, 0.5]


def make_config(labels, image_size, patch_size, hidden, layers, heads, ffn, note=""):
    cfg = {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "image_size": image_size,
        "patch_size": patch_size,
        "num_channels": 3,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": 1e-12,
        "qkv_bias": True,
        "encoder_stride": patch_size,
        "initializer_range": 0.02,
        "id2label": {str(i): l for i, l in enumerate(labels)},
        "label2id": {l: i for i, l in enumerate(labels)},
        "problem_type": "multi_label_classification",
        "torch_dtype": "float32",
    }
    if note:
        cfg["_demo_note"] = note
    return cfg


def preprocessor_config(image_size):
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 3,  # PIL.Image.BICUBIC: what training used (PIL), the engine's resize_bicubic_pil
        "do_rescale": True,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": True,
        "image_mean": MEAN,
        "image_std": STD,
    }


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, p = c["hidden_size"], c["patch_size"]
        n = (c["image_size"] // p) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.position_embeddings = nn.Parameter(torch.zeros(1, n + 1, d))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(c["num_channels"], d, kernel_size=p, stride=p)

    def forward(self, x):
        t = self.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1)
        return t + self.position_embeddings


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query = nn.Linear(d, d, bias=c["qkv_bias"])
        self.key = nn.Linear(d, d, bias=c["qkv_bias"])
        self.value = nn.Linear(d, d, bias=c["qkv_bias"])

    def forward(self, x):
        B, T, D = x.shape
        hd = D // self.heads

        def split(t):
            return t.view(B, T, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)
        return (a @ v).transpose(1, 2).reshape(B, T, D)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f, eps = c["hidden_size"], c["intermediate_size"], c["layer_norm_eps"]
        self.layernorm_before = nn.LayerNorm(d, eps=eps)
        self.attention = nn.Module()
        self.attention.attention = SelfAttention(c)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(d, d)
        self.layernorm_after = nn.LayerNorm(d, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, f)
        self.output = nn.Module()
        self.output.dense = nn.Linear(f, d)

    def forward(self, x):
        x = x + self.attention.output.dense(self.attention.attention(self.layernorm_before(x)))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class ViTForImageClassification(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.config = c
        self.vit = nn.Module()
        self.vit.embeddings = Embeddings(c)
        self.vit.encoder = nn.Module()
        self.vit.encoder.layer = nn.ModuleList([Layer(c) for _ in range(c["num_hidden_layers"])])
        self.vit.layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.classifier = nn.Linear(c["hidden_size"], len(c["id2label"]))

    def tokens(self, pixels):
        """(B, 3, S, S) normalised -> (B, 1 + N, D) after the final LayerNorm"""
        x = self.vit.embeddings(pixels)
        for layer in self.vit.encoder.layer:
            x = layer(x)
        return self.vit.layernorm(x)

    def forward(self, pixels):
        """-> (logits (B, L), pooled CLS feature (B, D), patch tokens (B, N, D))"""
        t = self.tokens(pixels)
        return self.classifier(t[:, 0]), t[:, 0], t[:, 1:]


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # LayerNorm weights
                p.fill_(1.0)
            elif "cls_token" in name or "position_embeddings" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def to_pixels(u8):
    """(B, S, S, 3) uint8 -> normalised (B, 3, S, S): rescale 1/255, (x - mean) / std"""
    t = torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float().div(255)
    return (t - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def save(model, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    c = model.config
    R.write_safetensors(os.path.join(out_dir, "model.safetensors"), model.state_dict(), "F32")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(c, f, indent=1)
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor_config(c["image_size"]), f, indent=1)


def read_safetensors(path):
    """name -> float32 tensor (F32 / BF16 / F16 files)"""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        raw = data[a:b]
        if h["dtype"] == "F32":
            t = torch.from_numpy(np.frombuffer(raw, np.float32).copy())
        elif h["dtype"] == "F16":
            t = torch.from_numpy(np.frombuffer(raw, np.float16).astype(np.float32))
        elif h["dtype"] == "BF16":
            t = torch.from_numpy(np.frombuffer(raw, np.int16).copy()).view(torch.bfloat16).float()
        else:
            raise ValueError("%s: tensor %s has dtype %s" % (path, name, h["dtype"]))
        out[name] = t.view(h["shape"])
    return out


def load(model_dir):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    m = ViTForImageClassification(c).eval()
    m.load_state_dict(read_safetensors(os.path.join(model_dir, "model.safetensors")))
    return m


def labels_of(model):
    c = model.config
    return [c["id2label"][str(i)] for i in range(len(c["id2label"]))]
