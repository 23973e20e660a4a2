"""Captions for DenseCap (Johnson et al. 2016, arXiv:1511.07571): the vocabulary, a METEOR-style caption similarity,
the paper's dense-captioning mAP, and greedy / beam-search decoding of any step-wise language model. A library.

Similarity. The paper thresholds METEOR (Denkowski & Lavie). nltk's METEOR needs WordNet downloads (no downloads at
run time here) and the METEOR jar needs Java, so we write METEOR's core ourselves (Banerjee & Lavie 2005), exact
unigram matches only (no stems, synonyms or paraphrases; on templated captions there are none to find):

    P = m / |candidate|,  R = m / |reference|,  F_mean = 10 P R / (R + 9 P)
    penalty = 0.5 (chunks / m)^3,  score = F_mean (1 - penalty)        (0 when m = 0; max over references)

m is the number of aligned unigrams (each reference word used once); a chunk is a run of matches adjacent and in the
same order in both captions. METEOR picks the alignment with the fewest crossings; we align greedily left to right,
preferring the reference position that continues the current chunk (equal on captions without repeated words).

Dense-captioning mAP (the paper's sec. 4.1 metric, with the rules of densecap's eval_utils.lua as we recall them;
not checked line by line against that code here): per image, ground-truth boxes that overlap
with IoU >= 0.7 are merged into one box (their mean) holding all their captions as references (greedily, the box
with the most such neighbours first). Predictions are taken by decreasing score; each is matched to the merged box of
highest IoU; if that box is already taken (or IoU = 0) the prediction is a false positive, else it takes the box and
its similarity to the box's references is computed. Pooled over images and sorted by score, a prediction is a true
positive at (IoU threshold t, similarity threshold s) when it took a box with IoU >= t and similarity > s;
AP(t, s) = 1/101 sum_{r in 0, 0.01, .., 1} max{precision_k : recall_k >= r} (0 when recall never reaches r), and
mAP is the mean over t in (0.3, .., 0.7) and s in (0, 0.05, .., 0.25). The detection-only mAP ignores the caption
(s = -inf), averaged over t.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainables.boxes import box_iou

IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
SIMILARITY_THRESHOLDS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
MERGE_IOU = 0.7
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(caption: str) -> list[str]:
    """Lower-case words (letters and digits); punctuation is dropped."""
    return _WORD.findall(caption.lower())


class Vocabulary:
    """Words <-> ids. Ids 0..3 are <pad>, <start>, <end>, <unk>; then the words in the order given."""

    PAD, START, END, UNK = 0, 1, 2, 3
    SPECIAL = ("<pad>", "<start>", "<end>", "<unk>")

    def __init__(self, words: Iterable[str]) -> None:
        self.words: list[str] = list(self.SPECIAL) + [w for w in dict.fromkeys(words) if w not in self.SPECIAL]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """The words seen at least ``min_count`` times, most frequent first (ties alphabetically): deterministic."""
        counts = Counter(w for c in captions for w in tokenize(c))
        return cls(sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str, max_len: int) -> list[int]:
        """Word ids of the first ``max_len`` words, then <end>."""
        return [self.index.get(w, self.UNK) for w in tokenize(caption)[:max_len]] + [self.END]

    def encode_batch(self, captions: Sequence[str], max_len: int) -> Tensor:
        """(N, max_len + 1) int64: each caption's ids and <end>, padded with <pad>."""
        out = torch.full((len(captions), max_len + 1), self.PAD, dtype=torch.long)
        for i, caption in enumerate(captions):
            ids = self.encode(caption, max_len)
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """The words up to the first <end>; <pad> and <start> are skipped."""
        words = []
        for i in ids:
            if int(i) == self.END:
                break
            if int(i) not in (self.PAD, self.START):
                words.append(self.words[int(i)])
        return " ".join(words)


def meteor_lite(candidate: str, references: str | Sequence[str]) -> float:
    """The module docstring's exact-match METEOR of ``candidate`` against the best of ``references``."""
    refs = [references] if isinstance(references, str) else list(references)
    return max((_meteor_one(tokenize(candidate), tokenize(r)) for r in refs), default=0.0)


def _meteor_one(cand: list[str], ref: list[str]) -> float:
    used = [False] * len(ref)
    matches, chunks, previous = 0, 0, -2  # previous: the reference position of the last aligned word
    for word in cand:
        positions = [j for j, w in enumerate(ref) if w == word and not used[j]]
        if not positions:
            previous = -2  # an unmatched candidate word ends the chunk
            continue
        j = previous + 1 if previous + 1 in positions else positions[0]
        chunks += j != previous + 1  # a new chunk unless it continues the last one in both captions
        used[j], previous, matches = True, j, matches + 1
    if matches == 0:
        return 0.0
    p, r = matches / len(cand), matches / len(ref)
    f_mean = 10 * p * r / (r + 9 * p)  # F_mean = 10PR / (R + 9P)
    return f_mean * (1 - 0.5 * (chunks / matches) ** 3)  # x (1 - 0.5 (chunks / m)^3)


def merge_boxes(boxes: Tensor, captions: Sequence[str], thresh: float = MERGE_IOU) -> tuple[Tensor, list[list[str]]]:
    """Ground-truth boxes overlapping with IoU >= ``thresh`` merged (module docstring): (M, 4) mean boxes and the
    captions of each group."""
    left = list(range(len(boxes)))
    merged, refs = [], []
    iou = box_iou(boxes.double(), boxes.double()) >= thresh if len(boxes) else None
    while left:
        sub = iou[left][:, left]
        seed = int(sub.sum(1).argmax())  # the box with the most neighbours (the first of ties)
        group = [left[k] for k in sub[seed].nonzero().flatten().tolist()]
        merged.append(boxes[group].double().mean(0))
        refs.append([captions[g] for g in group])
        left = [k for k in left if k not in group]
    return (torch.stack(merged) if merged else torch.zeros(0, 4, dtype=torch.float64)), refs


def average_precision_101(tp: np.ndarray, num_gt: int) -> float:
    """AP of pooled detections already sorted by score: mean over r = 0, .01, .., 1 of max precision at recall >= r."""
    if num_gt == 0 or tp.size == 0:
        return 0.0
    tps = np.cumsum(tp)
    recall, precision = tps / num_gt, tps / np.arange(1, tp.size + 1)
    ap = 0.0
    for r in np.linspace(0, 1, 101):
        reached = precision[recall >= r - 1e-12]
        ap += float(reached.max()) if reached.size else 0.0
    return ap / 101


def dense_captioning_map(predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]],
                         similarity: Callable[[str, Sequence[str]], float] = meteor_lite,
                         iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
                         similarity_thresholds: Sequence[float] = SIMILARITY_THRESHOLDS) -> dict[str, Any]:
    """The paper's mAP (module docstring). ``predictions[i]``: {"boxes" (N, 4), "scores" (N,), "captions" N str};
    ``targets[i]``: {"boxes" (G, 4), "captions" G str}. Returns {"map", "det_map", "ap" (T, S) array}."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    scores, overlaps, sims = [], [], []
    num_gt = 0
    for pred, target in zip(predictions, targets, strict=True):
        gt, refs = merge_boxes(torch.as_tensor(target["boxes"]).reshape(-1, 4), list(target["captions"]))
        num_gt += len(gt)
        boxes = torch.as_tensor(pred["boxes"]).reshape(-1, 4).double()
        order = torch.argsort(torch.as_tensor(pred["scores"]), descending=True, stable=True).tolist()
        iou = box_iou(boxes, gt) if len(gt) else torch.zeros(len(boxes), 0, dtype=torch.float64)
        taken = [False] * len(gt)
        for k in order:
            scores.append(float(pred["scores"][k]))
            best, j = (float(iou[k].max()), int(iou[k].argmax())) if len(gt) else (0.0, -1)
            if best > 0 and not taken[j]:  # the best box is free: take it and score the caption against it
                taken[j] = True
                overlaps.append(best)
                sims.append(similarity(pred["captions"][k], refs[j]))
            else:  # no overlap, or a higher-scoring prediction took the box: a false positive at every threshold
                overlaps.append(-1.0)
                sims.append(-np.inf)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    ov, sim = np.asarray(overlaps)[order], np.asarray(sims)[order]
    ap = np.array([[average_precision_101((ov >= t) & (sim > s), num_gt) for s in similarity_thresholds]
                   for t in iou_thresholds])
    det = [average_precision_101(ov >= t, num_gt) for t in iou_thresholds]
    return {"map": float(ap.mean()), "det_map": float(np.mean(det)), "ap": ap}


StepFn = Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, tuple[Tensor, ...]]]


@torch.no_grad()
def beam_search(step: StepFn, state: tuple[Tensor, ...], start_id: int, end_id: int, max_len: int,
                beam_size: int = 1) -> tuple[Tensor, Tensor]:
    """Decode N sequences at once. ``step(tokens (M,), state) -> (log_probs (M, V), state)``; every state tensor
    has the batch first. Returns (tokens (N, <= max_len) int64, each ending at ``end_id`` or cut at ``max_len``;
    their log-likelihoods (N,)). ``beam_size`` 1 is greedy decoding. The best finished beam wins by its total
    log-probability (no length normalisation: templated captions of one grammar have comparable lengths)."""
    n = state[0].shape[0]
    k = beam_size
    state = tuple(s.repeat_interleave(k, 0) for s in state)  # (N K, ...): beam b of sequence i at i K + b
    device = state[0].device
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at first, so the K beams do not start as copies
    tokens = torch.full((n, k, 0), end_id, dtype=torch.long, device=device)
    last = torch.full((n * k,), start_id, dtype=torch.long, device=device)
    done = torch.zeros(n, k, dtype=torch.bool, device=device)
    for _ in range(max_len):
        log_probs, state = step(last, state)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.view(n, k, vocab)
        frozen = torch.full_like(log_probs, float("-inf"))
        frozen[..., end_id] = 0.0  # a finished beam continues only with <end>, at no cost: its score stays
        log_probs = torch.where(done[..., None], frozen, log_probs)
        total = (scores[..., None] + log_probs).view(n, k * vocab)
        scores, flat = total.topk(k, dim=1)
        parent, word = flat // vocab, flat % vocab
        tokens = torch.cat([tokens.gather(1, parent[..., None].expand(-1, -1, tokens.shape[2])), word[..., None]], 2)
        done = done.gather(1, parent) | (word == end_id)
        rows = (torch.arange(n, device=device)[:, None] * k + parent).flatten()
        state = tuple(s[rows] for s in state)
        last = word.flatten()
        if bool(done.all()):
            break
    best = scores.argmax(1)
    return tokens[torch.arange(n, device=device), best], scores[torch.arange(n, device=device), best]
