#!/usr/bin/python3
"""Loss curve PNG from train.py's loss.tsv (step, seconds, loss, ema, lr), drawn with
PIL (Debian's python3 here has no matplotlib). Usage: plot_loss.py loss.tsv out.png [title]"""
import math
import sys

from PIL import Image, ImageDraw

rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
step = [int(r[0]) for r in rows]
sec = [float(r[1]) for r in rows]
loss = [float(r[2]) for r in rows]
ema = [float(r[3]) for r in rows]
title = sys.argv[3] if len(sys.argv) > 3 else "training loss (cross-entropy on answer tokens)"
W, H, L, R, T, B = 900, 520, 70, 20, 40, 60
img = Image.new("RGB", (W, H), "white")
d = ImageDraw.Draw(img)
lo, hi = math.log10(max(min(loss), 1e-3)), math.log10(max(loss))
lo, hi = math.floor(lo * 2) / 2, math.ceil(hi * 2) / 2


def X(s):
    return L + (W - L - R) * (s - step[0]) / max(1, step[-1] - step[0])


def Y(v):
    return T + (H - T - B) * (hi - math.log10(max(v, 1e-3))) / (hi - lo)


d.rectangle([L, T, W - R, H - B], outline="black")
e = lo
while e <= hi + 1e-9:
    y = Y(10 ** e)
    d.line([L, y, W - R, y], fill=(225, 225, 225))
    d.text((5, y - 6), "%.3g" % 10 ** e, fill="black")
    e += 0.5
for k in range(6):
    s = step[0] + (step[-1] - step[0]) * k / 5
    i = min(range(len(step)), key=lambda j: abs(step[j] - s))
    d.line([X(s), H - B, X(s), H - B + 5], fill="black")
    d.text((X(s) - 20, H - B + 8), "%d" % s, fill="black")
    d.text((X(s) - 20, H - B + 22), "%.0f min" % (sec[i] / 60), fill=(90, 90, 90))
d.text((W // 2 - 20, H - 18), "step", fill="black")
d.text((L, 10), title, fill="black")
d.line([(X(s), Y(v)) for s, v in zip(step, loss)], fill=(150, 180, 230), width=1)
d.line([(X(s), Y(v)) for s, v in zip(step, ema)], fill=(200, 30, 30), width=2)
d.text((W - 260, T + 8), "blue: per step   red: EMA (0.95)", fill="black")
d.text((W - 260, T + 22), "final EMA %.4f after %d steps, %.1f min" % (ema[-1], step[-1], sec[-1] / 60), fill="black")
img.save(sys.argv[2])
