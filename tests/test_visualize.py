"""Visualisation functions: a trace in, an image / figure with the right size and content out."""

import numpy as np
import pytest
from PIL import Image

import tiny_models
from studio.pair import stream_pair
from v2drop.trace import PatchLayout, SampleTrace, Trace
from visualize import charts, overlay, story

WHITE = (255, 255, 255)


def _expected_colour(rgb, alpha):
    return tuple(np.array(WHITE) * (1 - alpha) + np.array(rgb) * alpha)


def classify(img: Image.Image) -> dict[str, int]:
    """Pixels of a white-image overlay by nearest colour: clear, red (dropped now), dim (dropped before)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    refs = {"clear": WHITE, "red": _expected_colour(overlay.DROPPED_NOW_RGB, overlay.RED_ALPHA),
            "dim": _expected_colour(overlay.DEAD_RGB, overlay.DIM_ALPHA)}
    names = list(refs)
    dist = np.stack([np.abs(arr - np.array(refs[n], dtype=np.float32)).sum(-1) for n in names])
    nearest = dist.argmin(0)
    return {n: int((nearest == i).sum()) for i, n in enumerate(names)}


def fill_class(cell: Image.Image) -> str:
    """The class of one patch of a white-image overlay by its median colour (the fill under the hatching)."""
    median = np.median(np.asarray(cell.convert("RGB"), dtype=np.float32).reshape(-1, 3), axis=0)
    counts = classify(Image.new("RGB", (1, 1), tuple(int(v) for v in median)))
    return max(counts.items(), key=lambda kv: kv[1])[0]


def panel_cells(img: Image.Image, layout, panel_size, label_h=18, gap=6) -> dict[int, Image.Image]:
    """``{ordinal: the patch's pixels}`` of an overlay (one panel per frame, side by side, labelled
    above when there are several)."""
    top = label_h if len(layout.grids) > 1 else 0
    out = {}
    for i, (frame, x0, y0, x1, y1) in overlay.patch_boxes(layout, panel_size).items():
        dx = frame * (panel_size[0] + gap)
        out[i] = img.crop((dx + x0, top + y0, dx + x1, top + y1))
    return out


def classes_of(img: Image.Image, layout, panel_size) -> dict[str, set[int]]:
    out = {"clear": set(), "red": set(), "dim": set()}
    for i, cell in panel_cells(img, layout, panel_size).items():
        out[fill_class(cell)].add(i)
    return out


def hatch_share(cell: Image.Image, rgb) -> float:
    """Share of a patch's pixels that have exactly the hatch colour ``rgb``."""
    arr = np.asarray(cell.convert("RGB"), dtype=np.int32)
    return float((np.abs(arr - np.array(rgb)).sum(-1) == 0).mean())


def grid_sample(rows=4, cols=4, frames=1, newline=False) -> SampleTrace:
    cells, grids, kinds = [], [], []
    for f in range(frames):
        grids.append((rows, cols)); kinds.append("base" if f == 0 and frames > 1 else "crop" if frames > 1 else "image")
        for r in range(rows):
            cells += [(f, r, c) for c in range(cols)]
            if newline and f > 0:
                cells.append((f, -1, -1))
    n = len(cells)
    return SampleTrace(num_vision_tokens=n, vision_positions=list(range(5, 5 + n)),
                       layout=PatchLayout(cells, grids, kinds))


def with_drops(sample: SampleTrace, num_layers=6, stages=((1, 0.5), (3, 0.25))) -> Trace:
    """Keep every other alive token at each stage (deterministic), with made-up scores."""
    alive = list(range(sample.num_vision_tokens))
    per_layer = []
    stage = dict(stages)
    for layer in range(num_layers):
        if layer in stage:
            keep = int(len(alive) * stage[layer])
            sample.kept[layer] = alive[::max(1, len(alive) // max(keep, 1))][:keep]
            alive = sample.kept[layer]
        if layer > 0:
            sample.scores[layer] = {"index": list(alive), "score": [float(i) for i in alive]}
        per_layer.append(len(alive))
    sample.alive_per_layer = per_layer
    trace = Trace(method="v2drop", schedule=",".join(f"{l}:{r}" for l, r in stages), num_layers=num_layers)
    trace.samples.append(sample)
    return trace


def cell_area(layout, size, ordinals):
    boxes = overlay.patch_boxes(layout, size)
    return sum((boxes[i][3] - boxes[i][1]) * (boxes[i][4] - boxes[i][2]) for i in ordinals if i in boxes)


@pytest.mark.parametrize("layer", [0, 1, 2, 3, 5])
def test_kept_overlay_paints_exactly_the_dropped_patches(layer):
    trace = with_drops(grid_sample(8, 8))
    s = trace.samples[0]
    white = Image.new("RGB", (256, 256), WHITE)
    img = overlay.kept_overlay(white, s, layer, size=256)
    assert img.size == (256, 256)
    alive, now = overlay.layer_status(s, layer)
    before = set(range(64)) - alive - now
    assert len(alive) == len(s.alive_after(layer))
    assert classes_of(img, s.layout, img.size) == {"clear": alive, "red": now, "dim": before}
    if layer == 3:  # 32 alive before layer 3, 8 kept: 24 red cells
        assert len(now) == 24
    cells = panel_cells(img, s.layout, img.size)
    for i, cell in cells.items():  # grey "\\" hatching on the dim ones only (the picture is white: so is "/")
        assert (hatch_share(cell, overlay.HATCH_DEAD_RGB) > 0.1) == (i in before), i
    for i in now | before:  # the hatch lies exactly on the pattern of its direction
        _, x0, y0, x1, y1 = overlay.patch_boxes(s.layout, img.size)[i]
        mask = overlay.hatch_mask(img.size, "/" if i in now else "\\")[y0 + 1:y1, x0 + 1:x1]
        rgb = overlay.HATCH_NOW_RGB if i in now else overlay.HATCH_DEAD_RGB
        arr = np.asarray(img, dtype=np.int32)[y0 + 1:y1, x0 + 1:x1]  # inside the grid lines
        assert (np.abs(arr - np.array(rgb)).sum(-1) == 0).tolist() == mask.tolist()


@pytest.mark.parametrize("background", [(230, 30, 30), (0, 0, 0), (40, 40, 48)])
def test_dropped_patches_stand_apart_from_red_objects_and_dark_backgrounds(background):
    """On a red object, on black, and on the dimming colour itself, a dropped patch is not one flat
    colour: its hatching differs from its fill by far, while a kept patch stays the picture."""
    trace = with_drops(grid_sample(4, 4))
    s = trace.samples[0]
    img = overlay.kept_overlay(Image.new("RGB", (96, 96), background), s, 3, size=96)
    alive, now = overlay.layer_status(s, 3)
    before = set(range(16)) - alive - now
    assert alive and now and before
    for i, cell in panel_cells(img, s.layout, img.size).items():
        arr = np.asarray(cell, dtype=np.float32)[1:, 1:].reshape(-1, 3)  # inside the grid lines
        spread = float(np.abs(arr.max(0) - arr.min(0)).sum())
        if i in alive:
            assert spread == 0 and tuple(arr[0]) == background, i
        else:
            assert spread > 150, (i, spread)  # hatch against fill: visible whatever the picture's colour


def test_multi_crop_layout_gets_one_panel_per_frame_and_skips_newlines():
    s = grid_sample(4, 4, frames=2, newline=True)  # base 4×4, crop 4×4 with a newline token per row
    with_drops(s, stages=((2, 0.5),))
    img = overlay.kept_overlay(Image.new("RGB", (200, 100), WHITE), s, 2, size=200)
    assert img.width > 2 * 200 - 1  # two panels side by side, each 200 wide
    dropped = {i for i in s.dropped_at(2) if s.layout.cells[i][1] >= 0}
    assert classes_of(img, s.layout, (200, 100))["red"] == dropped


def test_non_square_grid_maps_onto_the_whole_image():
    s = grid_sample(3, 5)
    with_drops(s, stages=((1, 0.4),))
    img = overlay.kept_overlay(Image.new("RGB", (500, 300), WHITE), s, 1, size=500)
    assert img.size == (500, 300)
    boxes = overlay.patch_boxes(s.layout, img.size)
    assert boxes[0][1:] == (0, 0, 100, 100) and boxes[14][1:] == (400, 200, 500, 300)


def test_region_crops_to_the_grid_area():
    s = grid_sample(4, 4)
    with_drops(s)
    img = overlay.kept_overlay(Image.new("RGB", (400, 200), WHITE), s, 0, region=(100, 0, 300, 200), size=128)
    assert img.size == (128, 128)


def test_variation_heatmap_orders_colours_by_score_and_darkens_dead_tokens():
    trace = with_drops(grid_sample(4, 4))
    s = trace.samples[0]
    img = overlay.variation_heatmap(Image.new("RGB", (64, 64), WHITE), s, 2, size=64, alpha=1.0, legend=False)
    arr = np.asarray(img, dtype=float)
    boxes = overlay.patch_boxes(s.layout, img.size)

    def centre(i):
        _, x0, y0, x1, y1 = boxes[i]
        return arr[(y0 + y1) // 2, (x0 + x1) // 2].sum()

    alive = s.scores[2]["index"]
    assert centre(alive[-1]) > centre(alive[0])          # higher score -> brighter
    dead = [i for i in range(16) if i not in alive]
    cells = panel_cells(img, s.layout, img.size)
    assert dead and all(hatch_share(cells[i], overlay.HATCH_DEAD_RGB) > 0.1 for i in dead)  # dropped: hatched
    lowest = np.asarray(cells[alive[0]], dtype=np.float32)[1:, 1:]   # the least varying: one flat dark colour
    assert np.ptp(lowest.reshape(-1, 3), axis=0).sum() == 0 and lowest[0, 0].sum() < 60
    assert hatch_share(cells[alive[0]], overlay.HATCH_DEAD_RGB) == 0
    with pytest.raises(ValueError, match="layer 0"):
        overlay.variation_heatmap(img, s, 0)


def test_heatmap_colour_bar_spans_the_layers_scores():
    trace = with_drops(grid_sample(4, 4))
    s = trace.samples[0]
    bare = overlay.variation_heatmap(Image.new("RGB", (256, 256), WHITE), s, 2, size=256, legend=False)
    img = overlay.variation_heatmap(Image.new("RGB", (256, 256), WHITE), s, 2, size=256)
    assert img.width == 256 and img.height == 256 + 2 * overlay.LEGEND_ROW
    assert np.array_equal(np.asarray(img)[:256], np.asarray(bare))
    assert overlay.variation_range(s, 2) == (min(s.scores[2]["score"]), max(s.scores[2]["score"]))
    bar = np.asarray(img, dtype=np.int32)[256 + 10]          # a row through the colour bar
    ends = overlay.colormap(np.array([0.0, 1.0])).astype(np.int32)
    assert np.abs(bar[6] - ends[0]).sum() <= 6 and np.abs(bar[6:230] - ends[1]).sum(-1).min() <= 6
    kept = overlay.kept_overlay(Image.new("RGB", (256, 256), WHITE), s, 3, size=256, legend=True)
    assert kept.height == 256 + 2 * overlay.LEGEND_ROW  # two rows of keys at this width
    assert overlay.kept_legend(1000).height == overlay.LEGEND_ROW  # one row when wide enough
    key = kept.crop((0, 256, 256, kept.height))           # its swatches carry both hatchings
    assert hatch_share(key, overlay.HATCH_DEAD_RGB) > 0 and hatch_share(key, overlay.HATCH_NOW_RGB) > 0


def test_dropped_overlay_requires_a_drop_layer():
    trace = with_drops(grid_sample(4, 4))
    with pytest.raises(ValueError, match="not a drop layer"):
        overlay.dropped_overlay(Image.new("RGB", (32, 32)), trace.samples[0], 2)


def test_charts_carry_the_trace_numbers():
    trace = with_drops(grid_sample(8, 8))
    fig = charts.alive_chart(trace)
    assert list(fig.data[1].y) == trace.samples[0].alive_per_layer
    assert list(fig.data[0].y) == [64] * trace.num_layers
    full = {"prefill_seconds": 0.2, "decode_seconds": 0.5, "tokens": 6, "decode_tokens_per_second": 10.0,
            "peak_memory_bytes": 2**30, "kv_cache_bytes": 4096, "memory_kind": "process_rss"}
    drop = {**full, "prefill_seconds": 0.1, "kv_cache_bytes": 2048}
    perf = charts.performance_chart(full, drop)
    assert len(perf.data) == 2 * len(charts.METRICS)
    assert perf.data[0].y[0] == pytest.approx(200.0) and perf.data[1].y[0] == pytest.approx(100.0)
    rows = charts.metrics_rows(full, drop)
    assert rows[0][0].startswith("Prefill") and rows[0][3] == "-50.0 %"
    kv = next(r for r in rows if r[0].startswith("KV"))
    assert kv[1:3] == ["4", "2"]
    ret = charts.retention_chart(trace.samples, bins=4)
    assert len(ret.data[0].y) == 4 and all(0 <= v <= 100 for v in ret.data[0].y)


def test_story_tells_the_run():
    trace = with_drops(grid_sample(8, 8))
    text = story.run_story(trace)
    assert "layer **1**" in text and "layer **3**" in text
    assert "kept 32, dropped 32" in text and "kept 8, dropped 24" in text
    assert "most varying" in text
    assert "keep_ratio" in story.how_it_works()
    assert story.WHEN_LAZY_MATTERS in story.how_it_works()  # the failure case is taught, not hidden
    assert "cannot run" in story.schedule_text(None, error="bad")


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_overlay_from_a_real_run(tiny, family):
    """A real trace (dynamic-resolution / anyres models): every vision token is placed, and the
    painted dropped area equals the trace's dropped tokens."""
    model, processor = tiny(family)
    image = tiny_models.image(3, (96, 64))
    last = None
    for last in stream_pair(model, processor, image, "what is in the image", [], [], "2:0.5,4:0.5",
                            max_new_tokens=2):
        pass
    s = last.trace.samples[0]
    assert s.layout is not None and len(s.layout.cells) == s.num_vision_tokens
    white = Image.new("RGB", image.size, WHITE)
    img = overlay.kept_overlay(white, s, 4, size=128)
    panel = overlay._panel_base(white, None, 128).size
    now = {i for i in s.dropped_at(4) if s.layout.cells[i][1] >= 0}
    assert classes_of(img, s.layout, panel)["red"] == now
    assert overlay.variation_heatmap(white, s, 3, size=128, legend=False).size == img.size
    legend = overlay.variation_heatmap(white, s, 3, size=128)
    assert legend.width == img.width and legend.height > img.height  # the colour bar under it


# ------------------------------------------------------------------------------ video: strip and timeline
def video_sample(frames=3, rows=4, cols=4, newline=False) -> SampleTrace:
    cells = [(f, r, c) for f in range(frames) for r in range(rows) for c in range(cols)]
    if newline:
        cells.append((frames - 1, -1, -1))
    n = len(cells)
    return SampleTrace(num_vision_tokens=n, vision_positions=list(range(3, 3 + n)),
                       layout=PatchLayout(cells, [(rows, cols)] * frames, ["video"] * frames))


def cell_classes(strip: Image.Image, tile: int, f: int, per_row: int, rows=4, cols=4) -> list[str]:
    """Nearest colour class at the centre of each cell of tile ``f`` of a strip (white frames)."""
    x0 = (f % per_row) * (tile + overlay._GAP)
    y0 = (f // per_row) * (tile + overlay._LABEL_H + overlay._GAP) + overlay._LABEL_H
    out = []
    for r in range(rows):
        for c in range(cols):
            box = (x0 + round(c * tile / cols), y0 + round(r * tile / rows),
                   x0 + round((c + 1) * tile / cols), y0 + round((r + 1) * tile / rows))
            out.append(fill_class(strip.crop(box)))
    return out


@pytest.mark.parametrize("layer", [0, 1, 2, 3, 5])
def test_frame_strip_paints_each_frames_kept_tokens(layer):
    sample = video_sample(frames=5)
    trace = with_drops(sample)
    frames = [Image.new("RGB", (64, 64), WHITE)] * 5
    strip = overlay.frame_strip(frames, sample, layer, size=96, per_row=3)
    assert strip.size == (3 * 96 + 2 * overlay._GAP, 2 * (96 + overlay._LABEL_H) + overlay._GAP)
    alive, dropped_now = overlay.layer_status(sample, layer)
    for f in range(5):
        got = cell_classes(strip, 96, f, 3)
        ordinals = range(f * 16, (f + 1) * 16)
        expected = ["clear" if i in alive else "red" if i in dropped_now else "dim" for i in ordinals]
        assert got == expected, (layer, f)
    assert sum(cell_classes(strip, 96, f, 3).count("clear") for f in range(5)) == trace.samples[0].alive_per_layer[layer]


def test_frame_strip_maps_temporal_patches_to_the_first_frame_of_each_pair():
    """Qwen: 6 sampled frames, 3 token grids (step 2): tile f shows sampled frame 2f."""
    colours = [(250, 0, 0), (0, 0, 0), (0, 250, 0), (0, 0, 0), (0, 0, 250), (0, 0, 0)]
    frames = [Image.new("RGB", (80, 40), c) for c in colours]
    sample = video_sample(frames=3, rows=2, cols=4)
    with_drops(sample)
    tiles = overlay.strip_tiles(frames, sample, 0, step=2, size=80)
    assert len(tiles) == 3 and all(t.size == (80, 40) for t in tiles)
    for f, tile in enumerate(tiles):
        assert tile.getpixel((10, 10)) == colours[2 * f]
    assert overlay.frame_labels(3, 6, 2, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]) == [
        "frames 0-1 · 0.0 s", "frames 2-3 · 1.0 s", "frames 4-5 · 2.0 s"]
    assert overlay.frame_labels(3, 5, 2)[-1] == "frame 4"  # odd count: the last slice repeats frame 4


def test_frame_strip_variation_and_dropped_modes():
    sample = video_sample(frames=2)
    with_drops(sample)
    frames = [Image.new("RGB", (64, 64), WHITE)] * 2
    heat = overlay.frame_strip(frames, sample, 2, mode="variation", size=64)
    assert heat.size == (2 * 64 + overlay._GAP, 64 + overlay._LABEL_H)
    with pytest.raises(ValueError, match="no variation"):
        overlay.frame_strip(frames, sample, 0, mode="variation")
    with pytest.raises(ValueError, match="not a drop layer"):
        overlay.frame_strip(frames, sample, 2, mode="dropped")
    assert overlay.frame_strip(frames, sample, 1, mode="dropped").size == overlay.frame_strip(frames, sample, 1).size


def test_frame_timeline_counts_sum_to_alive_per_layer():
    sample = video_sample(frames=4, newline=True)
    trace = with_drops(sample)
    counts = charts.alive_per_frame(sample, trace.num_layers)
    assert counts.shape == (4, 6)
    assert counts.sum(0).tolist() == sample.alive_per_layer
    assert counts[:, 0].tolist() == [16, 16, 16, 17]  # the newline token belongs to the last frame
    fig = charts.frame_timeline(trace, step=2, timestamps=[0, 1, 2, 3, 4, 5, 6, 7])
    heat = fig.data[0]
    assert np.asarray(heat.z).tolist() == counts.tolist()
    assert list(heat.y) == ["frames 0-1 · 0.0 s", "frames 2-3 · 2.0 s", "frames 4-5 · 4.0 s", "frames 6-7 · 6.0 s"]
    assert list(heat.x) == list(range(6))
    with pytest.raises(ValueError, match="no patch layout"):
        charts.alive_per_frame(SampleTrace(num_vision_tokens=4, vision_positions=[0, 1, 2, 3]), 6)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_strip_and_timeline_from_a_real_video_run(tiny, family):
    from studio.videos import load_video_file
    from v2drop.video_inputs import frames_per_layout_frame
    model, processor = tiny(family)
    video = load_video_file(tiny_models.__file__.replace("tests/tiny_models.py", "assets/videos/moving_shapes.mp4"), 6)
    for last in stream_pair(model, processor, video, "what is in the image", [], [], "2:0.5,4:0.5",
                            max_new_tokens=2):
        pass
    trace, step = last.trace, frames_per_layout_frame(model)
    sample = trace.samples[0]
    n_grids = len(sample.layout.grids)
    assert n_grids == -(-len(video) // step)
    counts = charts.alive_per_frame(sample, trace.num_layers)
    assert counts.sum(0).tolist() == sample.alive_per_layer
    fig = charts.frame_timeline(trace, step=step, timestamps=video.timestamps, num_frames=len(video))
    assert len(fig.data[0].y) == n_grids
    strip = overlay.frame_strip(video.frames, sample, 4, step=step, timestamps=video.timestamps, size=96)
    tw, th = overlay.strip_tiles(video.frames, sample, 4, step=step, size=96)[0].size
    assert strip.size == (n_grids * tw + (n_grids - 1) * overlay._GAP, th + overlay._LABEL_H)
    assert overlay.frame_strip(video.frames, sample, 4, mode="variation", step=step, size=96).size == strip.size


def test_sweep_story_reads_the_numbers_of_each_budget_and_layer():
    row = dict(budget=0.5, reachable=True, schedule="1:0.6", avg_kept_share=0.5, accuracy=0.88)
    sweep = {"n": 1200, "unpruned": {"accuracy": 0.911}, "rows": [
        {**row, "first_layer": 1, "method": "v2drop", "relative": 0.968, "recall_at_first_drop": 0.716},
        {**row, "first_layer": 1, "method": "random", "relative": 0.95, "recall_at_first_drop": 0.66},
        {**row, "first_layer": 2, "method": "v2drop", "relative": 0.39, "recall_at_first_drop": 0.03},
        {**row, "first_layer": 2, "method": "random", "relative": 0.93, "recall_at_first_drop": 0.5},
        {**row, "first_layer": 5, "method": "v2drop", "reachable": False, "relative": None,
         "recall_at_first_drop": None}]}
    text = story.sweep_story(sweep)
    assert "1200 held-out questions" in text and "91.1 %" in text
    assert ("layer 1: 97 % of the accuracy, 72 % of the object patches kept (best other: random 95 %); "
            "layer 2: 39 % of the accuracy, 3 % of the object patches kept (best other: random 93 %).") in text
    assert "layer 5" not in text  # unreachable positions are not described


def test_sweep_figure_titles_ranges_and_lines_read_at_a_glance():
    """The embedded model's sweep figure: short titles that cannot overlap, one y-range per row,
    and a look per method that keeps coinciding lines visible (random lies under uniform)."""
    import json
    from pathlib import Path

    sweep = json.loads((Path(__file__).resolve().parents[1] / "assets" / "shapes-llava" / "sweep.json").read_text())
    fig = charts.sweep_chart(sweep)
    budgets = list(dict.fromkeys(r["budget"] for r in sweep["rows"]))
    titles = [a.text for a in fig.layout.annotations if a.text.startswith("budget")]
    assert titles == [f"budget {100 * b:.0f} %" for b in budgets]  # one short title per column, no row titles
    axes = fig.layout
    for row in (1, 2):  # the panels of a row share one y-range
        names = [f"yaxis{'' if (row - 1) * len(budgets) + c == 1 else (row - 1) * len(budgets) + c}"
                 for c in range(1, len(budgets) + 1)]
        ranges = {tuple(axes[n].range) for n in names}
        assert len(ranges) == 1, (row, ranges)
        low, high = ranges.pop()
        assert low == 0 and high >= 100
    looks = {}
    for t in fig.data:
        looks.setdefault(t.name, (t.line.color, t.line.dash, t.marker.symbol, t.line.width))
    assert len({look[:3] for look in looks.values()}) == len(looks)   # colour, dash and marker: each its own
    widths = [look[3] for look in looks.values()]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)  # later lines thinner
    methods = list(looks)
    # where random and uniform coincide, the one drawn first is wider: both stay visible
    assert methods.index("random") < methods.index("uniform")
    assert fig.layout.legend.y < 0 and fig.layout.margin.t >= 100  # legend under the plots, title room above
    assert all(len(line) <= 60 for line in fig.layout.title.text.replace("<sup>", "").replace("</sup>", "")
               .split("<br>"))  # every title line fits a phone
