"""DenseCap's networks (Johnson et al. 2016, arXiv:1511.07571, sec. 3.1): a CNN, the recognition network and the
LSTM language model. The localization layer between the CNN and the recognition network is the region proposal
network of :mod:`trainables.rpn` plus the region features of :mod:`trainables.roi_ops` (wired in
:mod:`trainables.densecap`).

- CNN: a small VGG-style stack of 3x3 convolutions (the paper: VGG-16 up to conv5_3, stride 16), ``stride`` 4 or 8.
- Recognition network: the region features (C x X x Y, the paper 512 x 7 x 7) flattened, two fully connected
  layers with ReLU and dropout (the paper: 4096 units) give the region code; a linear layer gives the final
  confidence and one the final box deltas of the region (relative to the region's box).
- Language model: the region code, projected to the word size, is the LSTM's first input x_{-1}; then <start> and
  the caption's words; the LSTM's outputs after x_{-1} predict the words and <end> (the paper's sec. 3.1 language
  model, Karpathy & Fei-Fei's conditioning by the first input).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from trainables.boxes import clip_boxes, decode_boxes, encode_boxes, nms
from trainables.captions import Vocabulary, beam_search
from trainables.roi_ops import roi_features
from trainables.rpn import RegionProposalNetwork, rois_with_batch_index, sample_rois

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # Fast R-CNN's scaling of the recognition network's box targets


class Backbone(nn.Module):
    """3x3 convolutions with batch norm and ReLU; each stage halves the resolution (stride = 2^stages)."""

    def __init__(self, width: int, stride: int) -> None:
        super().__init__()
        if stride not in (4, 8, 16):
            raise ValueError(f"stride must be 4, 8 or 16, got {stride}")
        layers: list[nn.Module] = []
        channels = 3
        for stage in range(stride.bit_length() - 1):
            out = width if stage > 0 else width // 2
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.Conv2d(out, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.out_channels = width

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)


class RecognitionNetwork(nn.Module):
    """Region features (K, C, X, Y) -> region code (K, D), final confidence logit (K,), box deltas (K, 4)."""

    def __init__(self, in_features: int, code_size: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(in_features, code_size), nn.ReLU(inplace=True),
                                nn.Dropout(dropout), nn.Linear(code_size, code_size), nn.ReLU(inplace=True),
                                nn.Dropout(dropout))
        self.confidence = nn.Linear(code_size, 1)
        self.deltas = nn.Linear(code_size, 4)
        nn.init.normal_(self.deltas.weight, std=0.001)  # Fast R-CNN: small initial box corrections
        nn.init.zeros_(self.deltas.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        code = self.fc(features)
        return code, self.confidence(code).squeeze(1), self.deltas(code)


class CaptionLSTM(nn.Module):
    """The language model: x_{-1} = W_c code, x_0 = embed(<start>), x_t = embed(w_t); logits of w_{t+1} (and <end>)
    from each LSTM output after x_{-1}."""

    def __init__(self, vocab_size: int, code_size: int, embed_size: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.project = nn.Linear(code_size, embed_size)
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, code: Tensor, inputs: Tensor) -> Tensor:
        """Teacher forcing: ``inputs`` (K, T) = <start> w_1 .. w_{T-1}; returns logits (K, T, V) of w_1 .. w_T."""
        sequence = torch.cat([self.project(code)[:, None], self.embed(inputs)], 1)  # x_{-1}, x_0, .., x_{T-1}
        hidden, _ = self.lstm(sequence)
        return self.out(self.drop(hidden[:, 1:]))  # the output at x_{-1} predicts nothing

    def start(self, code: Tensor) -> tuple[Tensor, Tensor]:
        """The LSTM state (h, c), batch first (K, H), after reading x_{-1} = W_c code."""
        _, (h, c) = self.lstm(self.project(code)[:, None])
        return h[0], c[0]

    def step(self, tokens: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One decoding step: log-probabilities (K, V) of the next word after ``tokens`` (K,), and the new state."""
        h, c = state
        output, (h, c) = self.lstm(self.embed(tokens)[:, None], (h[None].contiguous(), c[None].contiguous()))
        return torch.log_softmax(self.out(output[:, 0]), -1), (h[0], c[0])


class RegionBatch(NamedTuple):
    """What the training forward pass gives the loss (:func:`trainables.densecap.densecap_loss`)."""

    rpn_losses: dict[str, Tensor]  # the localization layer's {"rpn_objectness", "rpn_box"}
    confidence: Tensor  # (R,) final confidence logits of the sampled regions
    positive: Tensor  # (R,) bool
    regions: Tensor  # (P, 4) the positive regions' boxes, image by image in sampling order
    image_of: Tensor  # (P,) the image each positive region belongs to
    deltas: Tensor  # (P, 4) final box deltas of the positive regions
    target_deltas: Tensor  # (P, 4) encode_boxes(matched gt box, region)
    word_logits: Tensor  # (P, T, V) the language model's logits of w_1 .. w_T, <end>
    words: Tensor  # (P, T) the matched gt captions' word ids (<pad> after <end>)


class Detections(NamedTuple):
    boxes: list[Tensor]  # per image (D_i, 4) refined, clipped boxes
    scores: list[Tensor]  # (D_i,) sigma(final confidence)
    codes: list[Tensor]  # (D_i, code_size) the region codes the captions are decoded from


class DenseCapModel(nn.Module):
    """CNN -> localization layer (RPN proposals, sampled regions, region features) -> recognition network ->
    language model. ``region_features``: "bilinear" (RoIAlign's bilinear sampling, DenseCap's sampler) or
    "roipool" (RoIPool's quantised max pooling, the paper's ablation)."""

    def __init__(self, config: Mapping[str, Any], vocab_size: int) -> None:
        super().__init__()
        c = config
        self.cnn = Backbone(c["cnn_width"], c["stride"])
        self.rpn = RegionProposalNetwork(
            c["cnn_width"], [c["stride"]], [tuple(c["anchor_sizes"])], tuple(c["anchor_ratios"]),
            fg_iou=c["fg_iou"], bg_iou=c["bg_iou"], batch_size_per_image=c["rpn_batch"], positive_fraction=0.5,
            pre_nms_top_n=c["pre_nms_proposals"], post_nms_top_n=c["train_proposals"], nms_thresh=c["proposal_nms"])
        self.recognition = RecognitionNetwork(c["cnn_width"] * c["region_size"] ** 2, c["code_size"], c["dropout"])
        self.lm = CaptionLSTM(vocab_size, c["code_size"], c["embed_size"], c["hidden_size"], c["dropout"])
        self.method = {"bilinear": "align", "roipool": "pool"}[c["region_features"]]
        self.region_size, self.stride, self.sampling_ratio = c["region_size"], c["stride"], c["sampling_ratio"]
        self.config = dict(c)

    def region_codes(self, features: Tensor, boxes: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Region features of per-image ``boxes`` (detached: proposals carry no gradient) -> recognition network."""
        rois = rois_with_batch_index([b.detach() for b in boxes]).to(features.device)
        regions = roi_features(features, rois, self.region_size, 1.0 / self.stride, self.method,
                               sampling_ratio=self.sampling_ratio, aligned=self.method == "align")
        return self.recognition(regions)

    def forward(self, images: Tensor, gt_boxes: list[Tensor], gt_words: list[Tensor]) -> RegionBatch:
        """Training pass: ``gt_words[i]`` (G_i, T) are image i's captions in the order of ``gt_boxes[i]``."""
        c = self.config
        features = self.cnn(images)
        self.rpn.post_nms_top_n = c["train_proposals"]
        out = self.rpn([features], tuple(images.shape[-2:]), gt_boxes)
        samples = sample_rois(out.proposals, gt_boxes, c["regions_per_image"], c["positive_fraction"],
                              fg_iou=c["fg_iou"], bg_iou=c["bg_iou"], add_gt=True)
        code, confidence, deltas = self.region_codes(features, [s.boxes for s in samples])
        positive = torch.cat([s.positive for s in samples])
        # the caption and box of each positive region: its matched gt's, taken image by image in sampling order
        matched_boxes = torch.cat([gt[s.matched[s.positive]] for gt, s in zip(gt_boxes, samples, strict=True)])
        words = torch.cat([w[s.matched[s.positive]] for w, s in zip(gt_words, samples, strict=True)])
        regions = torch.cat([s.boxes[s.positive] for s in samples])
        image_of = torch.cat([torch.full((int(s.positive.sum()),), i, device=images.device)
                              for i, s in enumerate(samples)])
        targets = encode_boxes(matched_boxes, regions, BOX_WEIGHTS)
        inputs = torch.cat([torch.full_like(words[:, :1], Vocabulary.START), words[:, :-1]], 1)
        word_logits = self.lm(code[positive], inputs)
        return RegionBatch(out.losses, confidence, positive, regions, image_of, deltas[positive], targets,
                           word_logits, words)

    @torch.no_grad()
    def detect(self, images: Tensor) -> Detections:
        """Test pass: ``test_proposals`` proposals per image, refined and scored by the recognition network, NMS at
        ``final_nms``, the ``detections_per_image`` best kept."""
        c = self.config
        features = self.cnn(images)
        self.rpn.post_nms_top_n = c["test_proposals"]
        proposals = self.rpn([features], tuple(images.shape[-2:])).proposals
        code, confidence, deltas = self.region_codes(features, proposals)
        boxes, scores, codes, start = [], [], [], 0
        for props in proposals:
            end = start + len(props)
            refined = clip_boxes(decode_boxes(deltas[start:end], props, BOX_WEIGHTS), *images.shape[-2:])
            score = torch.sigmoid(confidence[start:end])
            keep = nms(refined, score, c["final_nms"])[:c["detections_per_image"]]
            boxes.append(refined[keep])
            scores.append(score[keep])
            codes.append(code[start:end][keep])
            start = end
        return Detections(boxes, scores, codes)

    @torch.no_grad()
    def caption(self, code: Tensor, max_words: int, beam_size: int) -> Tensor:
        """Word ids (K, <= max_words + 1) of the region codes' captions; ``beam_size`` 1 is greedy."""
        if len(code) == 0:
            return torch.zeros(0, 1, dtype=torch.long, device=code.device)
        tokens, _ = beam_search(self.lm.step, self.lm.start(code), Vocabulary.START, Vocabulary.END,
                                max_words + 1, beam_size)
        return tokens
