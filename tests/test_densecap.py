"""DenseCap (Johnson et al. 2016): the caption similarity and the dense-captioning mAP on hand-built cases, the
vocabulary, beam search against greedy on a hand-set language model, the scene and Visual Genome readers (a tiny
Visual Genome folder written here; clear errors when it is missing or corrupt), region / caption pairing through
sampling, config errors, and that DenseCap learns to localize and caption in a bounded budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.ddp_ranks import train_on_gloo_ranks
from trainables import registry
from trainables.boxes import box_iou, decode_boxes
from trainables.captions import (
    Vocabulary,
    beam_search,
    dense_captioning_map,
    merge_boxes,
    meteor_lite,
)
from trainables.context import LocalContext
from trainables.data_formats import DatasetError
from trainables.densecap import DenseCapTask, densecap_loss
from trainables.densecap_data import read_visual_genome, scene_split
from trainables.densecap_networks import BOX_WEIGHTS
from trainables.loop import fit
from trainables.registry import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"train_images": 480, "val_images": 40, "test_images": 20, "epochs": 2, "batch_size": 16}


# -------------------------------------------------------------------------------------------------- similarity
def test_meteor_lite_on_hand_computed_cases() -> None:
    assert meteor_lite("a small red square", "a small red square") == pytest.approx(1 - 0.5 / 4 ** 3)
    # m = 3 of 4 words, two chunks ("a small", "square"): F = 0.75, penalty 0.5 (2/3)^3
    assert meteor_lite("a small red square", "a small blue square") == pytest.approx(0.75 * (1 - 0.5 * (2 / 3) ** 3))
    assert meteor_lite("square red small a", "a small red square") == pytest.approx(0.5)  # 4 chunks of 4: penalty 1/2
    assert meteor_lite("the big green dog", "a small red square") == 0.0
    p, r = 2 / 2, 2 / 4  # "red square" against "a small red square": P = 1, R = 1/2, one chunk
    assert meteor_lite("red square", "a small red square") == pytest.approx(
        10 * p * r / (r + 9 * p) * (1 - 0.5 * (1 / 2) ** 3))
    assert meteor_lite("a small red square", ["the dog", "a small red square"]) == pytest.approx(1 - 0.5 / 64)


def test_vocabulary_round_trip() -> None:
    vocab = Vocabulary.build(["A small red square.", "a large blue circle", "a small red square left of a circle"])
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and vocab.words[4] == "a"  # most frequent
    ids = vocab.encode("a small red square", max_len=10)
    assert ids[-1] == Vocabulary.END and vocab.decode(ids) == "a small red square"
    assert vocab.decode(vocab.encode("a green square", 10)) == "a <unk> square"
    assert vocab.decode(vocab.encode("a small red square left of a circle", 3)) == "a small red"
    batch = vocab.encode_batch(["a circle", "a small red square"], max_len=5)
    assert batch.shape == (2, 6) and batch[0, 3:].eq(Vocabulary.PAD).all()
    assert [vocab.decode(row) for row in batch.tolist()] == ["a circle", "a small red square"]
    assert vocab.decode([Vocabulary.START, *vocab.encode("a circle", 5), 5, 6]) == "a circle"  # stops at <end>


# ------------------------------------------------------------------------------------------------- dense mAP
TARGETS = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]]),
            "captions": ["a small red square", "a large blue circle"]},
           {"boxes": torch.tensor([[5.0, 5.0, 25.0, 25.0]]), "captions": ["a small green triangle"]}]


def _predict(shift: float = 0.0, captions: list[list[str]] | None = None) -> list[dict]:
    captions = captions or [t["captions"] for t in TARGETS]
    return [{"boxes": t["boxes"] + shift, "scores": torch.linspace(0.9, 0.5, len(t["boxes"])), "captions": c}
            for t, c in zip(TARGETS, captions, strict=True)]


def test_dense_map_is_one_for_perfect_predictions_and_zero_for_wrong_boxes() -> None:
    perfect = dense_captioning_map(_predict(), TARGETS)
    assert perfect["map"] == pytest.approx(1.0) and perfect["det_map"] == pytest.approx(1.0)
    assert perfect["ap"].shape == (5, 6)
    wrong = dense_captioning_map(_predict(shift=100.0), TARGETS)
    assert wrong["map"] == 0.0 and wrong["det_map"] == 0.0


def test_wrong_captions_lower_the_dense_map_but_not_the_detection_map() -> None:
    nonsense = dense_captioning_map(_predict(captions=[["the dog", "the dog"], ["the dog"]]), TARGETS)
    assert nonsense["det_map"] == pytest.approx(1.0) and nonsense["map"] == 0.0
    one_wrong = dense_captioning_map(_predict(captions=[["the dog", "a large blue circle"],
                                                        ["a small green triangle"]]), TARGETS)
    assert 0.3 < one_wrong["map"] < 1.0 and one_wrong["det_map"] == pytest.approx(1.0)
    # one wrong word of four still passes the paper's thresholds (<= 0.25), not the strict ones (>= 0.7)
    colour = _predict(captions=[["a small blue square", "a large blue circle"], ["a small green triangle"]])
    assert dense_captioning_map(colour, TARGETS)["map"] == pytest.approx(1.0)
    strict = dense_captioning_map(colour, TARGETS, similarity_thresholds=(0.7, 0.8, 0.9))["map"]
    assert strict < 0.9


def test_a_second_detection_of_a_taken_box_is_a_false_positive_and_overlapping_truths_merge() -> None:
    doubled = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]]),
                "scores": torch.tensor([0.4, 0.9]), "captions": ["a small red square"] * 2}]
    target = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]),
               "captions": ["a small red square", "a dog"]}]
    # ranks: TP (0.9), FP (0.4); recall 1/2 of 2 truths: precision 1 up to recall 0.5, then nothing
    assert dense_captioning_map(doubled, target)["det_map"] == pytest.approx(51 / 101)
    boxes, refs = merge_boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [30, 30, 40, 40.0]]),
                              ["a red square", "a square", "a circle"])
    assert len(boxes) == 2 and refs == [["a red square", "a square"], ["a circle"]]
    assert torch.allclose(boxes[0], torch.tensor([0.0, 0.0, 10.0, 10.5], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- beam search
def test_beam_search_finds_a_more_likely_caption_than_greedy_on_a_hand_set_model() -> None:
    """Words: 3 = "a", 4 = "b". After <start>: a 0.6, b 0.4; after a: a 0.36, b 0.34, <end> 0.3; after b: <end> 0.9.
    Greedy takes "a" and then the best word each time; "b <end>" (0.36) beats every sequence starting with "a"."""
    table = torch.full((5, 5), 1e-9)
    table[Vocabulary.START, 3], table[Vocabulary.START, 4] = 0.6, 0.4
    table[3, 3], table[3, 4], table[3, Vocabulary.END] = 0.36, 0.34, 0.3
    table[4, Vocabulary.END], table[4, 3] = 0.9, 0.1
    log_table = (table / table.sum(1, keepdim=True)).log()

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return log_table[tokens], state

    state = (torch.zeros(2, 1),)  # two sequences decoded at once
    greedy, greedy_ll = beam_search(step, state, Vocabulary.START, Vocabulary.END, max_len=6, beam_size=1)
    beam, beam_ll = beam_search(step, state, Vocabulary.START, Vocabulary.END, max_len=6, beam_size=3)
    assert greedy[0, 0] == 3 and beam[0].tolist()[:2] == [4, Vocabulary.END]
    assert torch.allclose(beam_ll, torch.tensor([math.log(0.4 * 0.9)] * 2), atol=1e-5)
    assert (beam_ll > greedy_ll + 0.1).all()
    path = [Vocabulary.START, *greedy[0].tolist()]
    ended = path.index(Vocabulary.END) if Vocabulary.END in path else len(path) - 1
    greedy_by_hand = sum(float(log_table[a, b]) for a, b in zip(path[:ended], path[1:ended + 1], strict=True))
    assert greedy_ll[0] == pytest.approx(greedy_by_hand, abs=1e-4)  # the returned score is the sequence's


# ------------------------------------------------------------------------------------------------------ data
def test_scene_splits_are_disjoint_seeded_and_carry_object_and_relation_captions() -> None:
    config = registry.get("densecap").resolve(SMALL)
    val, again, test = scene_split(config, "val"), scene_split(config, "val"), scene_split(config, "test")
    assert torch.equal(val.images, again.images) and not torch.equal(val.images[:20], test.images)
    assert all(len(b) == len(c) for b, c in zip(val.boxes, val.captions, strict=True))
    captions = [c for caps in val.captions for c in caps]
    assert any(len(c.split()) == 4 for c in captions) and any(" of " in c or "above" in c for c in captions)
    objects = scene_split({**config, "region_captions": "objects"}, "val")
    assert all(len(c.split()) == 4 for caps in objects.captions for c in caps)


def _write_visual_genome(root: Path, n: int = 12) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    entries = []
    for i in range(1, n + 1):
        Image.fromarray(np.full((40, 80, 3), 10 * i, dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        entries.append({"id": i, "regions": [
            {"region_id": 1, "image_id": i, "x": 10, "y": 5, "width": 20, "height": 10, "phrase": "A Red Car."},
            {"region_id": 2, "image_id": i, "x": 0, "y": 0, "width": 80, "height": 40,
             "phrase": "one two three four five six seven eight nine ten eleven twelve"}]})
    (root / "region_descriptions.json").write_text(json.dumps(entries))


def test_visual_genome_reader_scales_boxes_splits_images_and_drops_long_phrases(tmp_path: Path) -> None:
    _write_visual_genome(tmp_path)
    splits = read_visual_genome(str(tmp_path), image_size=64, max_images=100, max_words=10, max_regions=50)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 2, 2]  # ids 1, 11 test; 2, 12 val
    assert splits["test"].images.shape == (2, 3, 64, 64)
    assert splits["test"].images[0, :, :32].float().mean() == pytest.approx(10, abs=1)  # image 1, scaled to 64x32
    assert (splits["test"].images[0, :, 33:] == 0).all()  # padded below
    assert torch.allclose(splits["train"].boxes[0], torch.tensor([[8.0, 4.0, 24.0, 12.0]]))  # x 0.8
    assert splits["train"].captions[0] == ["a red car"]  # the 12-word phrase is dropped


def test_visual_genome_trains_through_the_registered_trainable(tmp_path: Path) -> None:
    _write_visual_genome(tmp_path)
    spec = registry.get("densecap")
    config = spec.resolve({"dataset": "visual_genome", "data_dir": str(tmp_path), "epochs": 1, "batch_size": 4,
                           "limit_train_batches": 1, "max_words": 10})
    ctx = LocalContext()
    spec.train(config, ctx)
    assert ctx.results[-1]["step"] == 1 and 0.0 <= ctx.results[-1]["val_dense_map"] <= 1.0


@pytest.mark.parametrize(("damage", "message"), [
    ("no_json", "missing region_descriptions.json"),
    ("bad_json", "is not a readable region_descriptions.json"),
    ("no_image", "image 3.jpg is missing"),
    ("bad_image", "cannot read image"),
    ("no_region_keys", "lacks x, y, width, height or phrase"),
])
def test_a_missing_or_corrupt_visual_genome_is_one_clear_error(tmp_path: Path, damage: str, message: str) -> None:
    _write_visual_genome(tmp_path)
    if damage == "no_json":
        (tmp_path / "region_descriptions.json").unlink()
    elif damage == "bad_json":
        (tmp_path / "region_descriptions.json").write_text('[{"id": 1, "regions": [')
    elif damage == "no_image":
        (tmp_path / "images" / "3.jpg").unlink()
    elif damage == "bad_image":
        (tmp_path / "images" / "3.jpg").write_bytes(b"not a jpeg at all")
    else:
        (tmp_path / "region_descriptions.json").write_text(json.dumps([{"id": 1, "regions": [{"phrase": "a"}]}]))
    with pytest.raises(DatasetError, match=message) as info:
        read_visual_genome(str(tmp_path), 64, 100, 10, 50)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(("overrides", "message"), [
    ({"region_features": "nearest"}, "region_features='nearest' is not one of"),
    ({"bg_iou": 0.8}, "bg_iou=0.8 must not exceed fg_iou=0.7"),
    ({"image_size": 32}, "image_size=32 is out of range"),
    ({"stride": 5}, "stride=5 is not one of"),
    ({"dataset": "visual_genome"}, "dataset visual_genome needs data_dir"),
    ({"dataset": "visual_genome", "data_dir": "/nonexistent/vg"}, "does not exist"),
    ({"beam_size": 0}, "beam_size=0 is out of range"),
    ({"regions": 3}, "has no config key"),
])
def test_bad_config_values_are_one_line_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        registry.get("densecap").resolve(overrides)
    assert "\n" not in str(info.value)


def test_densecap_is_registered_with_its_metrics() -> None:
    spec = registry.get("densecap")
    assert registry.TRAINABLE_MODULES["densecap"] == "trainables.densecap" and spec.primary == "val_dense_map"
    for metric in ("val_dense_map", "val_dense_map_beam", "val_det_map", "test_dense_map", "val_caption_accuracy"):
        assert spec.mode(metric) == "max"
    assert spec.mode("train_loss") == "min"


# --------------------------------------------------------------------------------------- pairing and learning
@pytest.mark.parametrize("method", ["bilinear", "roipool"])
def test_each_sampled_region_keeps_the_caption_and_box_of_its_best_ground_truth(method: str) -> None:
    config = registry.get("densecap").resolve({**SMALL, "region_features": method})
    task = DenseCapTask(config)
    torch.manual_seed(0)
    model = task.build_models()["densecap"]
    assert model.method == {"bilinear": "align", "roipool": "pool"}[method]
    index = [0, 1, 2, 3]
    boxes = [task.data.train.boxes[i] for i in index]
    out = model(task.data.train.images[index].float() / 255, boxes, [task.train_words[i] for i in index])
    assert out.positive.sum() == len(out.regions) == len(out.words) > 0
    for region, image, words, deltas in zip(out.regions, out.image_of, out.words, out.target_deltas, strict=True):
        best = int(box_iou(boxes[image], region[None]).argmax())
        assert task.vocab.decode(words.tolist()) == task.data.train.captions[image][best]
        assert torch.allclose(decode_boxes(deltas, region, BOX_WEIGHTS), boxes[image][best], atol=1e-3)
    terms = densecap_loss(out, 0.1, 1.0)
    assert set(terms) == {"loss", "caption_loss", "loc_objectness", "loc_box", "rec_objectness", "rec_box"}
    terms["loss"].backward()
    assert model.cnn.body[0].weight.grad.abs().sum() > 0 and model.lm.embed.weight.grad.abs().sum() > 0


def test_densecap_learns_to_localize_and_caption_in_a_bounded_budget(tmp_path: Path) -> None:
    """60 steps of 16 scenes (about 45 s on a loaded 2-core CPU): regions are found and captions start to fit.
    Measured (seeds 0, 1, 2; untrained -> trained): val det mAP 0.004 -> 0.312, 0.003 -> 0.265, 0.020 -> 0.290;
    val dense mAP 0.003 -> 0.258, 0.000 -> 0.225, 0.000 -> 0.233; caption similarity on the ground-truth boxes
    0.169 -> 0.293, 0.008 -> 0.293, 0.000 -> 0.303; training caption loss 1.01 (log V = 3.09). At this budget every
    region still gets much the same caption (size accuracy 0.48, colour 0.08-0.11); the sweep in
    docs/RESULTS.md (300 steps) goes further."""
    config = registry.get("densecap").resolve(SMALL)
    task = DenseCapTask(config)
    torch.manual_seed(config["seed"])
    task.models = task.build_models()  # the weights fit() starts from (same seed)
    before = task.score(task.data.val, torch.device("cpu"))
    ctx = LocalContext()
    fit(ctx, config, task)
    first, last = ctx.results
    assert last["step"] == 60
    assert last["train_caption_loss"] < 0.6 * math.log(len(task.vocab)), last
    assert last["val_det_map"] > before["det_map"] + 0.15, (before, last)
    assert last["val_dense_map"] > before["dense_map"] + 0.15, (before, last)
    assert last["val_caption_similarity"] > 0.25 > before["caption_similarity"], (before, last)
    task.write_artifacts(str(tmp_path))
    assert (tmp_path / "val_predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| score |" in (tmp_path / "val_captions.md").read_text()


def test_two_gloo_ranks_train_in_sync_through_ddp(tmp_path: Path) -> None:
    """Two ranks through the loop's DDP path (as a Ray Train worker group runs it): the training forward goes through
    DDP's wrapper, so both ranks hold the same weights after every epoch and report the same epoch mean."""
    ranks = train_on_gloo_ranks("densecap", {**SMALL, "train_images": 64, "val_images": 4, "test_images": 4,
                                             "limit_train_batches": 2}, tmp_path)
    assert [r["replicas_in_sync"] for r in ranks[0]] == [1.0, 1.0]
    assert ranks[0][-1]["step"] == 4 and ranks[0][-1]["train_loss"] == ranks[1][-1]["train_loss"]
