"""What matters, without a server: the per-layer share of the tokens that matter still alive, the
what-matters chart, marks (boxes and editor layers) mapped onto patch layouts (the Shapes grid,
non-square pictures, a multi-crop layout, a centre crop), the cyan outline on the overlays, the
gallery's ground truth found by pixels, and a baseline's one-prefill trace."""

import json

import numpy as np
import pytest
from PIL import Image

import tiny_models
from shapes import truth
from studio.ground_truth import (EXAMPLES_DIR, GroundTruth, centre_tokens, objects_raster, pixel_key,
                                 question_tokens)
from studio.inputs import ChatInputError, load_image
from studio.marks import editor_value, mask_from_box, mask_from_editor
from studio.matters import chart_of, find_matters, matters_state, trace_record
from studio.pair import prefill_trace
from v2drop.schedule import DropSchedule, fastv_layer, matched_schedule
from v2drop.trace import PatchLayout, SampleTrace, Trace
from visualize import charts, overlay

RECORDS = json.loads((EXAMPLES_DIR / "shapes_questions.json").read_text())


def grid_layout(rows: int = 16, cols: int = 16) -> PatchLayout:
    return PatchLayout([(0, r, c) for r in range(rows) for c in range(cols)], [(rows, cols)], ["image"])


def multi_crop_layout() -> PatchLayout:
    """A LLaVA-NeXT-like layout: a 4×4 base grid, then an 8×8 crop grid with a newline token per row."""
    cells = [(0, r, c) for r in range(4) for c in range(4)]
    for r in range(8):
        cells += [(1, r, c) for c in range(8)] + [(1, -1, -1)]
    return PatchLayout(cells, [(4, 4), (8, 8)], ["base", "crop"])


def hand_made_sample() -> SampleTrace:
    """16 tokens of a 4×4 grid: layer 1 keeps 0..7, layer 3 keeps 0..3, layer 5 keeps none."""
    sample = SampleTrace(num_vision_tokens=16, vision_positions=list(range(3, 19)), layout=grid_layout(4, 4))
    sample.kept = {1: list(range(8)), 3: [0, 1, 2, 3], 5: []}
    return sample


def cells_of(layout: PatchLayout, tokens) -> set:
    return {tuple(layout.cells[i]) for i in tokens}


# ------------------------------------------------------------------------------ share alive per layer
def test_share_of_the_tokens_that_matter_alive_per_layer_on_a_hand_made_trace():
    sample = hand_made_sample()
    tokens = [0, 5, 9, 12]
    assert charts.matters_alive(sample, tokens, 7) == [4, 2, 2, 1, 1, 0, 0]
    assert charts.matters_alive(None, tokens, 7) == [4] * 7  # the unpruned model keeps everything
    other = SampleTrace(num_vision_tokens=16, vision_positions=list(range(16)), layout=grid_layout(4, 4))
    other.kept = {2: [9, 12, 13, 14]}
    series = charts.matters_series({"unpruned": None, "V²Drop": sample, "random": other}, {12, 0, 5, 9, 5}, 7)
    assert [s.name for s in series] == ["unpruned", "V²Drop", "random"]
    assert all(s.total == 4 for s in series)
    assert series[1].shares == [1.0, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0]
    assert series[2].alive == [4, 4, 2, 2, 2, 2, 2]
    assert charts.MattersSeries("x", [0, 0], 0).shares == [1.0, 1.0]  # nothing to lose


def test_matters_chart_has_one_line_per_method_in_percent_and_says_its_source():
    series = charts.matters_series({"unpruned": None, "V²Drop": hand_made_sample()}, [0, 5, 9, 12], 7)
    fig = charts.matters_chart(series, "truth", drop_layers=[1, 3, 5])
    assert [t.name.split(" (")[0] for t in fig.data] == ["unpruned", "V²Drop"]
    assert list(fig.data[0].y) == [100.0] * 7 and list(fig.data[1].y) == [100, 50, 50, 25, 25, 0, 0]
    assert list(fig.data[1].customdata) == [4, 2, 2, 1, 1, 0, 0] and list(fig.data[1].x) == list(range(7))
    assert "Ground truth" in fig.layout.title.text and "4 vision tokens" in fig.layout.title.text
    assert "layer average 36 %" in fig.data[1].name  # (100+50+50+25+25+0+0) / 7
    assert len(fig.layout.shapes) == 3
    assert "Hand-marked" in charts.matters_chart(series, "marked").layout.title.text
    with pytest.raises(ValueError, match="source"):
        charts.matters_chart(series, "guess")


# ------------------------------------------------------------------------------ marks -> tokens
def test_a_box_marks_the_patches_it_covers_by_a_quarter_on_the_shapes_grid():
    layout = grid_layout()
    tokens = overlay.tokens_in_mask(layout, mask_from_box((8, 16, 40, 48), (128, 128)))
    assert cells_of(layout, tokens) == {(0, r, c) for r in range(2, 6) for c in range(1, 5)}
    # one pixel of the next column is 1/8 of its patches (not marked); two pixels are 1/4 (marked)
    assert len(overlay.tokens_in_mask(layout, mask_from_box((8, 16, 41, 48), (128, 128)))) == 16
    assert len(overlay.tokens_in_mask(layout, mask_from_box((8, 16, 42, 48), (128, 128)))) == 20
    # a 320×240 picture is squashed onto the same grid: its top-right quarter is the grid's top-right quarter
    tokens = overlay.tokens_in_mask(layout, mask_from_box((160, 0, 320, 120), (320, 240)))
    assert cells_of(layout, tokens) == {(0, r, c) for r in range(8) for c in range(8, 16)}


def test_a_box_marks_both_grids_of_a_multi_crop_layout_and_no_newline():
    layout = multi_crop_layout()
    tokens = overlay.tokens_in_mask(layout, mask_from_box((0, 0, 300, 200), (600, 400)))
    assert cells_of(layout, tokens) == ({(0, r, c) for r in range(2) for c in range(2)}
                                        | {(1, r, c) for r in range(4) for c in range(4)})
    everything = overlay.tokens_in_mask(layout, np.ones((40, 60), bool))
    assert len(everything) == 16 + 64 and all(layout.cells[i][1] >= 0 for i in everything)


def test_a_centre_crop_region_maps_the_mark_onto_the_cropped_grid():
    layout = grid_layout(4, 4)
    region = (100, 0, 300, 200)  # a 400×200 picture, its centre 200×200 seen by the grid
    assert overlay.tokens_in_mask(layout, mask_from_box((0, 0, 100, 200), (400, 200)), region, (400, 200)) == []
    tokens = overlay.tokens_in_mask(layout, mask_from_box((100, 0, 150, 50), (400, 200)), region, (400, 200))
    assert cells_of(layout, tokens) == {(0, 0, 0)}
    with pytest.raises(ValueError, match="image size"):
        overlay.tokens_in_mask(layout, np.ones((4, 4)), region)


def test_editor_layers_become_a_mask_and_bad_payloads_are_refused():
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[:32, :16, 3] = 200
    other = np.zeros((128, 128, 4), np.uint8)
    other[-16:, -16:] = (0, 229, 255, 150)
    mask = mask_from_editor({"background": None, "layers": [layer, other], "composite": None})
    assert mask.shape == (64, 64) and mask[:32, :16].all() and mask[-8:, -8:].all() and mask.sum() == 32 * 16 + 64
    assert mask_from_editor({"background": None, "layers": [np.zeros((8, 8, 4), np.uint8)], "composite": None}) is None
    assert mask_from_editor(None) is None and mask_from_editor({"layers": []}) is None
    for bad in ("/etc/passwd", {"layers": ["/etc/passwd"]}, {"layers": [np.zeros((4, 4, 3))]}, {"layers": "x"}):
        with pytest.raises(ChatInputError, match="could not be read") as err:
            mask_from_editor(bad)
        assert "/etc" not in str(err.value)
    with pytest.raises(ChatInputError, match="empty"):
        mask_from_box((10, 10, 10, 50), (64, 64))
    with pytest.raises(ChatInputError, match="four numbers"):
        mask_from_box(("a", 0, 1, 1), (64, 64))
    big = mask_from_box((0, 0, 2000, 1000), (4000, 2000))
    assert max(big.shape) <= 1024 and abs(big.mean() - 0.25) < 0.01


def test_editor_value_shows_the_mark_as_a_layer_the_size_of_the_picture(tmp_path):
    path = tmp_path / "pic.png"
    Image.new("RGB", (80, 40), "white").save(path)
    value = editor_value(str(path), mask_from_box((0, 0, 40, 40), (80, 40)))
    layer = np.asarray(value["layers"][0])
    assert value["background"] == str(path) and layer.shape == (40, 80, 4)
    assert (layer[:, :40, 3] > 0).all() and (layer[:, 40:, 3] == 0).all()
    assert mask_from_editor({"layers": [layer]}).mean() == pytest.approx(0.5)  # the editor sends it back as it was
    assert editor_value(str(path))["layers"] == [] and editor_value(None) is None


# ------------------------------------------------------------------------------ outlines
def _cyan(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img.convert("RGB")).astype(int)
    return (np.abs(arr - np.array(overlay.OUTLINE_RGB)).sum(-1) < 30)


def test_overlays_outline_exactly_the_contour_of_the_tokens_that_matter():
    sample = hand_made_sample()
    image = Image.new("RGB", (64, 64), "white")
    block = [0, 1, 2, 4, 5, 6, 8, 9, 10]  # a 3×3 block in the corner of the 4×4 grid
    for img in (overlay.kept_overlay(image, sample, 1, size=128, outline=block),
                overlay.variation_heatmap(image, SampleTrace(16, list(range(16)), scores={1: {
                    "index": list(range(16)), "score": list(range(16))}}, layout=grid_layout(4, 4)), 1, size=128,
                    outline=block)):
        cyan = _cyan(img)
        assert cyan.any() and not cyan[:, 96:].any() and not cyan[96:, :].any()  # only inside the block
        assert not cyan[40:56, 40:56].any()     # the block's centre patch touches only block patches
        assert cyan[0:3, 0:96].all() and cyan[0:96, 0:3].all() and cyan[93:96, 0:96].all()  # its border
    assert not _cyan(overlay.kept_overlay(image, sample, 1, size=128)).any()  # no outline asked, none drawn


def test_outline_on_a_multi_crop_layout_is_drawn_in_each_panel():
    layout = multi_crop_layout()
    sample = SampleTrace(num_vision_tokens=len(layout.cells), vision_positions=[], layout=layout)
    tokens = overlay.tokens_in_mask(layout, mask_from_box((0, 0, 32, 32), (64, 64)))
    img = overlay.kept_overlay(Image.new("RGB", (64, 64), "white"), sample, 0, size=128, outline=tokens)
    cyan = _cyan(img)
    left, right = cyan[:, :128], cyan[:, 134:]  # the base panel, a 6 px gap, the crop panel
    assert left.any() and right.any()
    assert not left[18 + 66:, :].any() and not right[18 + 66:, :].any()  # nothing below the top halves


# ------------------------------------------------------------------------------ ground truth
def test_gallery_pictures_are_found_by_their_pixels_not_their_names(tmp_path):
    catalogue = GroundTruth()
    assert len(catalogue) == len(RECORDS) >= 8
    source = EXAMPLES_DIR / "drawn_13_count.png"
    copy = tmp_path / "my holiday.png"
    copy.write_bytes(source.read_bytes())
    image, _ = load_image(copy)
    assert catalogue.scene_of(image).name == "drawn_13_count.png"
    changed = image.copy()
    changed.putpixel((5, 5), tuple(255 - v for v in changed.getpixel((5, 5))))
    assert catalogue.scene_of(changed) is None and pixel_key(changed) != pixel_key(image)
    assert catalogue.scene_of(load_image(EXAMPLES_DIR / "astronaut.png")[0]) is None
    renamed = tmp_path / "shapes_0_color.png"  # an example's name on another picture brings nothing
    Image.new("RGB", (128, 128), "white").save(renamed)
    assert catalogue.scene_of(load_image(renamed)[0]) is None


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_truth_on_the_shapes_grid_is_the_examples_question_patches(name):
    record = RECORDS[name]
    scene = GroundTruth().by_name(name)
    size = Image.open(EXAMPLES_DIR / name).size
    found = question_tokens(scene, record["question"], grid_layout(), (0, 0, *size), size)
    assert found.exact and found.tokens == record["question_patches"]
    # the geometry mapped onto the same grid (the path every other layout takes) gives the same tokens
    mapped = set(overlay.tokens_in_mask(grid_layout(), objects_raster(found.objects, size)))
    mapped |= centre_tokens(grid_layout(), found.objects, (0, 0, *size), size)
    assert mapped == set(found.tokens)
    assert {truth.centre_patch(o) for o in found.objects} <= mapped


def test_truth_follows_the_typed_question_and_maps_onto_other_layouts():
    scene = GroundTruth().by_name("shapes_0_color.png")
    full = (0, 0, 128, 128)
    circle = question_tokens(scene, "what color is the circle ?", grid_layout(), full, (128, 128))
    assert [o.shape for o in circle.objects] == ["circle"] and circle.tokens
    assert not set(circle.tokens) & set(RECORDS["shapes_0_color.png"]["question_patches"])
    assert question_tokens(scene, "is there a green triangle ?", grid_layout(), full, (128, 128)).tokens == []
    layout = multi_crop_layout()
    star = question_tokens(scene, "what color is the star ?", layout, full, (128, 128))
    assert not star.exact and star.tokens
    for i in star.tokens:  # every token lies on the star's bounding box, in both grids
        frame, row, col = layout.cells[i]
        rows, cols = layout.grids[frame]
        obj = star.objects[0]
        assert (col + 1) * 128 / cols > obj.x - obj.r and col * 128 / cols < obj.x + obj.r
        assert (row + 1) * 128 / rows > obj.y - obj.r and row * 128 / rows < obj.y + obj.r
    assert {layout.cells[i][0] for i in star.tokens} == {0, 1}


def test_a_mark_wins_over_the_truth_and_the_record_goes_with_the_trace():
    scene = GroundTruth().by_name("shapes_0_color.png")
    sample = SampleTrace(256, list(range(256)), kept={2: list(range(128))}, layout=grid_layout())
    found = find_matters(scene, None, "what color is the star ?", sample, (0, 0, 128, 128), (128, 128))
    assert found.source == "truth" and found.tokens == RECORDS["shapes_0_color.png"]["question_patches"]
    assert "the orange star" in found.note
    marked = find_matters(scene, mask_from_box((0, 0, 16, 16), (128, 128)), "what color is the star ?", sample,
                          (0, 0, 128, 128), (128, 128))
    assert marked.source == "marked" and marked.tokens == [0, 1, 16, 17] and "Hand-marked" in marked.note
    assert find_matters(None, None, "what is it ?", sample, (0, 0, 128, 128), (128, 128)) is None
    data = matters_state(marked, 4, {"unpruned": None, "V²Drop": sample}, [2])
    assert data["series"][1]["alive"] == [4, 4, 4, 4] and chart_of(data).layout.title.text.startswith("Hand-marked")
    record = trace_record(data, "what color is the star ?")
    assert record["source"] == "hand-marked" and record["tokens"] == [0, 1, 16, 17]
    assert chart_of(matters_state(find_matters(scene, None, "is there a blue star ?", sample, (0, 0, 128, 128),
                                               (128, 128)), 4, {"unpruned": None}, [])) is None


def test_a_trace_with_annotations_loads_back():
    trace = Trace(method="v2drop", schedule="1:0.5", num_layers=4, samples=[hand_made_sample()])
    data = json.loads(json.dumps(trace.to_dict()))
    data["what_matters"] = {"tokens": [1, 2]}
    back = Trace.from_dict(data)
    assert back.samples[0].kept == hand_made_sample().kept and back.schedule == "1:0.5"


# ------------------------------------------------------------------------------ baselines
def test_matched_schedule_lives_in_the_library_and_the_benchmark_still_has_it():
    from benchmarks import bench

    assert bench.matched_schedule is matched_schedule and bench.fastv_layer is fastv_layer
    reference = DropSchedule.parse("2:0.6,4:0.5,6:0.3")
    for method in ("fastv-lite", "pdrop", "random", "uniform"):
        schedule, _ = matched_schedule(method, reference, 8, 256)
        assert abs(schedule.average_kept(8, 256) - reference.average_kept(8, 256)) <= 0.02 * 256


@pytest.mark.parametrize("method", ["uniform", "fastv-lite"])
def test_a_baseline_prefill_keeps_tokens_by_its_matched_schedule(tiny, method):
    model, processor = tiny("llava")
    reference = DropSchedule.parse("2:0.5,4:0.5")
    image = tiny_models.image(3)
    probe = prefill_trace(model, processor, image, "what is it", [], reference, "v2drop")
    n = probe.samples[0].num_vision_tokens
    schedule, _ = matched_schedule(method, reference, probe.num_layers, n)
    trace = prefill_trace(model, processor, image, "what is it", [("a", "b")], schedule, method)
    sample = trace.samples[0]
    assert trace.method == method and sorted(sample.kept) == list(schedule.layers)
    assert sample.alive_per_layer == schedule.alive_per_layer(trace.num_layers, n)
    assert trace.tokens_generated <= 1


# ------------------------------------------------------------------------------ the editor
def _blob(key: str, payload: bytes):
    from gradio.components.image_editor import AcceptBlobs

    # (index 1: Gradio reads a layer index of 0 as "no index"; the page's index comes as text)
    return AcceptBlobs(data={"type": "layer", "index": 1, "file": b"", "id": key}, files=[("layer.png", payload)])


def test_the_mark_editor_keeps_few_pending_blobs_and_decodes_only_bounded_layers():
    import io

    import gradio as gr
    from gradio.components.image_editor import EditorData

    from studio.editor import MAX_PENDING, MAX_PENDING_BYTES, MarkEditor

    editor = MarkEditor()
    for i in range(3 * MAX_PENDING):  # blobs whose event never comes
        editor.accept_blobs(_blob(f"junk-{i}", b"x" * 1000))
    assert len(editor.blob_storage) == MAX_PENDING and "junk-0" not in editor.blob_storage
    big = b"x" * (MAX_PENDING_BYTES // 4)
    for i in range(8):
        editor.accept_blobs(_blob(f"big-{i}", big))
    assert sum(len(b.layers[-1]) for b in editor.blob_storage.values()) <= MAX_PENDING_BYTES
    assert "big-7" in editor.blob_storage and "big-0" not in editor.blob_storage
    layer = Image.new("RGBA", (32, 16), (0, 0, 0, 0))
    layer.paste((0, 229, 255, 150), (0, 0, 8, 16))
    buffer = io.BytesIO()
    layer.save(buffer, "PNG")
    editor.accept_blobs(_blob("mine", buffer.getvalue()))
    value = editor.preprocess(EditorData(id="mine"))
    assert value["background"] is None and value["composite"] is None
    assert (value["layers"][0][..., 3] > 0).sum() == 8 * 16 and "mine" not in editor.blob_storage
    huge = io.BytesIO()
    Image.new("RGBA", (3000, 3000)).save(huge, "PNG")
    editor.accept_blobs(_blob("huge", huge.getvalue()))
    with pytest.raises(gr.Error, match="larger than"):
        editor.preprocess(EditorData(id="huge"))
    assert editor.preprocess(EditorData(id="gone")) == {"background": None, "layers": [], "composite": None}
