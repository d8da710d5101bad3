#!/usr/bin/python3
"""GSCo prompt assembly as firstread's pipeline does it (MedDr's GSCo:
Mixture-of-Expert Diagnosis from the specialists, Retrieval-Augmented
Diagnosis from the most similar library cases). The demo generalist is trained
on exactly these strings, so this file must follow the C++ assembly (the
format is posted in /work/wt/COORD.md and documented in the README).
"""
DEFAULT_TEMPLATE = ("The diagnoses of the most similar cases are {rad}. "
                    "The diagnoses of the specialist models are {moed}.")
NONE = "none"        # what {moed} / {rad} say when nothing is positive / no case was found
NORMAL = "normal"    # the case library's label for a phantom without findings
MODES = ("off", "moed", "rad", "both")


def moed_text(probs, labels, threshold=0.5):
    """Specialist labels with p >= threshold, highest first, 'label (0.93)' joined ', '; none -> 'none'."""
    pos = [(float(p), i) for i, p in enumerate(probs) if p >= threshold]
    pos.sort(key=lambda t: (-t[0], t[1]))
    if not pos:
        return NONE
    return ", ".join("%s (%.2f)" % (labels[i], p) for p, i in pos)


def rad_text(neighbour_label_sets):
    """Labels of the top-k neighbours (nearest first) counted, a case with several labels once per label,
    most frequent first, ties: the label of the nearer neighbour first; 'nodule (7/10), normal (3/10)'."""
    k = len(neighbour_label_sets)
    if k == 0:
        return NONE
    count, first = {}, {}
    for rank, s in enumerate(neighbour_label_sets):
        for l in s:
            count[l] = count.get(l, 0) + 1
            first.setdefault(l, rank)
    if not count:
        return NONE
    items = sorted(count.items(), key=lambda kv: (-kv[1], first[kv[0]]))
    return ", ".join("%s (%d/%d)" % (l, n, k) for l, n in items)


def fill(template, mode, moed, rad):
    """The filled template for a gsco mode: sentences holding a placeholder the mode leaves out are dropped."""
    if mode == "off":
        return ""
    keep = []
    for sent in split_sentences(template):
        if "{rad}" in sent and mode not in ("rad", "both"):
            continue
        if "{moed}" in sent and mode not in ("moed", "both"):
            continue
        keep.append(sent.replace("{rad}", rad).replace("{moed}", moed))
    return " ".join(keep)


def split_sentences(template):
    """'A {rad}. B {moed}.' -> ['A {rad}.', 'B {moed}.'] (split after '. ')"""
    out, cur = [], ""
    parts = template.split(". ")
    for i, p in enumerate(parts):
        cur = p + ("." if i < len(parts) - 1 else "")
        out.append(cur.strip())
    return [s for s in out if s]


def assemble(prompt, mode, moed, rad, template=DEFAULT_TEMPLATE):
    extra = fill(template, mode, moed, rad)
    return prompt if not extra else prompt + " " + extra
