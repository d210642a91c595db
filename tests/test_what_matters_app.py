"""What matters, attacked and used through the HTTP API of ``python app.py`` in a subprocess (Gradio's
upload route, raw REST calls and ``gradio_client``), never by calling the app's functions:

- a gallery picture uploaded under another name gets its ground truth (for any question typed about
  it), a copy with one pixel changed gets none;
- a mark (editor layers or a box) replaces the truth, shows in the outlines and the trace, and is
  cleared again; a picked baseline joins the chart at V²Drop's budget;
- one visitor's mark or truth never reaches another session;
- an editor payload naming a server path is refused, with nothing about the path in the answer.
"""

import io
import json
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

import tiny_models  # noqa: E402
from app_server import AppServer, raw_call  # noqa: E402
from v2drop.schedule import default_schedule, fastv_layer  # noqa: E402
from visualize.overlay import OUTLINE_RGB  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
RECORDS = json.loads((EXAMPLES / "shapes_questions.json").read_text())
# /chat answers: panes, notice, question box, the views (…, 14 trace file, 15 timeline, 16 chart, 17 its note)
NOTICE, KEPT, TRACE_FILE, MATTERS, MATTERS_NOTE = 2, 6, 14, 16, 17
# /mark, /mark_box, /clear_marks answers: kept, heat, dropped, chart, note, trace file (, editor)
M_KEPT, M_CHART, M_NOTE, M_TRACE = 0, 3, 4, 5
SHAPES_LAYERS, FIRST_DROP, LAST_DROP = 8, 1, 6  # the embedded model and its default schedule's drop layers 1, 4, 6


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("matters")
    app = AppServer(log_path=work / "app.log", env={"GRADIO_TEMP_DIR": str(work / "gradio"),  # folders: tiny models
                                                    "V2DROP_SESSION_DIR": str(work / "sessions"),
                                                    "V2DROP_ALLOW_LOCAL_FOLDERS": "1"})
    app.work = work
    yield app
    app.stop()


def _upload(server: AppServer, name: str, data: bytes) -> str:
    """POST one file to Gradio's public upload route; its server path."""
    boundary = "mattersboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server.url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())[0]


def _chat_outputs(stream: str) -> list:
    """The outputs of a finished REST call of /chat (its ``event: complete`` data), without the
    session state's slot (which REST answers with, and ``gradio_client`` leaves out)."""
    assert "event: complete" in stream, stream[-2000:]
    out = json.loads(stream.split("event: complete")[-1].split("data:", 1)[1].strip())
    assert out[3] is None  # the state output: never sent to the visitor
    return out[:3] + out[4:]


def _file(value) -> dict:
    """A downloaded JSON output: a local path (gradio_client) or a FileData with a URL (REST)."""
    if isinstance(value, dict):
        with urllib.request.urlopen(value["url"], timeout=30) as reply:
            return json.loads(reply.read())
    return json.loads(Path(value).read_text())


def _fd(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def _lines(chart) -> list[dict]:
    return json.loads(chart["plot"])["data"] if chart else []


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _has_cyan(path: str) -> bool:
    arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return bool((np.abs(arr - np.array(OUTLINE_RGB)).sum(-1) < 30).sum() > 20)


# ------------------------------------------------------------------------------ ground truth
def test_a_gallery_picture_uploaded_under_any_name_gets_its_truth_and_a_changed_copy_none(server):
    name = "drawn_26_position.png"
    data = (EXAMPLES / name).read_bytes()
    path = _upload(server, "my-drawing.png", data)
    out = _chat_outputs(raw_call(server, "chat", [RECORDS[name]["question"], _fd(path)]))
    assert "Done with" in out[NOTICE] and "Ground truth" in out[MATTERS_NOTE], out[MATTERS_NOTE]
    record = _file(out[TRACE_FILE])["what_matters"]
    assert record["source"] == "ground truth" and record["tokens"] == RECORDS[name]["question_patches"]
    assert record["alive_per_layer"]["unpruned"] == [len(record["tokens"])] * SHAPES_LAYERS
    assert [line["name"].split(" (")[0] for line in _lines(out[MATTERS])] == ["unpruned", "V²Drop"]
    # any question typed about the picture: the objects it names
    out = _chat_outputs(raw_call(server, "chat", ["how many stars are there ?", _fd(path)]))
    stars = _file(out[TRACE_FILE])["what_matters"]
    assert len(stars["objects"]) > 1 and set(record["tokens"]) < set(stars["tokens"])
    # the same file with one pixel changed is just a picture
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.putpixel((0, 0), tuple(255 - v for v in image.getpixel((0, 0))))
    changed = _upload(server, name, _png(image))  # even under the example's own name
    out = _chat_outputs(raw_call(server, "chat", [RECORDS[name]["question"], _fd(changed)]))
    assert "Done with" in out[NOTICE] and "Ground truth" not in out[MATTERS_NOTE] and out[MATTERS] is None
    assert "what_matters" not in _file(out[TRACE_FILE])


def test_another_models_patch_layout_gets_the_truth_mapped_onto_each_of_its_grids(server, tmp_path):
    tiny_models.build("llava_onevision", tmp_path)  # anyres: a base grid and a crop grid
    client = Client(server.url, verbose=False)
    assert "Loaded" in client.predict(str(tmp_path / "llava_onevision"), False, api_name="/switch_model")[5]
    out = client.predict("what color is the star ?", handle_file(str(EXAMPLES / "shapes_0_color.png")),
                         api_name="/chat")
    assert "mapped onto this model's patch layout" in out[MATTERS_NOTE], out[MATTERS_NOTE]
    trace = _file(out[TRACE_FILE])
    layout, tokens = trace["samples"][0]["layout"], trace["what_matters"]["tokens"]
    assert len(layout["grids"]) > 1 and {layout["cells"][i][0] for i in tokens} == set(range(len(layout["grids"])))
    star = trace["what_matters"]["objects"][0]
    for i in tokens:  # each token's patch overlaps the star's box, in whichever grid it is
        frame, row, col = layout["cells"][i]
        rows, cols = layout["grids"][frame]
        assert col * 128 / cols < star["x"] + star["r"] and (col + 1) * 128 / cols > star["x"] - star["r"]
        assert row * 128 / rows < star["y"] + star["r"] and (row + 1) * 128 / rows > star["y"] - star["r"]


# ------------------------------------------------------------------------------ marks and baselines
def _layer_png(tmp_path: Path, size=(128, 128), box=(0, 0, 64, 32)) -> str:
    """An editor layer: transparent, painted (alpha > 0) over ``box``."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((0, 229, 255, 150), box)
    layer.save(tmp_path / "layer.png")
    return str(tmp_path / "layer.png")


def test_a_mark_replaces_the_truth_in_chart_outline_and_trace_and_clears(server, tmp_path):
    client = Client(server.url, verbose=False)
    out = client.predict("what color is the star ?", handle_file(str(EXAMPLES / "shapes_0_color.png")),
                         api_name="/chat")
    assert "Ground truth" in out[MATTERS_NOTE] and _has_cyan(out[KEPT])  # the truth is outlined
    editor = {"background": None, "layers": [handle_file(_layer_png(tmp_path))], "composite": None}
    marked = client.predict(editor, LAST_DROP, FIRST_DROP, api_name="/mark")
    assert "Hand-marked" in marked[M_NOTE] and "32 of 256" in marked[M_NOTE], marked[M_NOTE]
    record = _file(marked[M_TRACE])["what_matters"]
    assert record["source"] == "hand-marked" and record["tokens"] == [r * 16 + c for r in range(4) for c in range(8)]
    assert _has_cyan(marked[M_KEPT]) and "Hand-marked" in json.loads(marked[M_CHART]["plot"])["layout"]["title"]["text"]
    box = client.predict(0, 0, 16, 16, LAST_DROP, FIRST_DROP, api_name="/mark_box")
    assert _file(box[M_TRACE])["what_matters"]["tokens"] == [0, 1, 16, 17]
    cleared = client.predict(LAST_DROP, FIRST_DROP, api_name="/clear_marks")
    assert "Ground truth" in cleared[M_NOTE]
    assert _file(cleared[M_TRACE])["what_matters"]["tokens"] == RECORDS["shapes_0_color.png"]["question_patches"]


def test_a_picked_baseline_joins_the_chart_at_v2drops_budget(server):
    client = Client(server.url, verbose=False)
    assert "after the next question" in client.predict("uniform", api_name="/set_baseline")[1]
    out = client.predict("how many squares are there ?", handle_file(str(EXAMPLES / "shapes_1_count.png")),
                         api_name="/chat")
    assert [line["name"].split(" (")[0] for line in _lines(out[MATTERS])] == ["unpruned", "V²Drop", "uniform"]
    baseline = _file(out[TRACE_FILE])["what_matters"]["baseline"]
    assert baseline["method"] == "uniform" and baseline["schedule"] == str(default_schedule(SHAPES_LAYERS, 256))
    chart, note, trace = client.predict("fastv-lite", api_name="/set_baseline")  # no new question needed
    baseline = _file(trace)["what_matters"]["baseline"]
    assert baseline["method"] == "fastv-lite" and "FastV-lite" in note
    assert [int(stage.split(":")[0]) for stage in baseline["schedule"].split(",")] == [fastv_layer(SHAPES_LAYERS)]
    assert sorted(int(k) for k in baseline["kept"]) == [fastv_layer(SHAPES_LAYERS)]
    assert _lines(chart)[-1]["name"].startswith("FastV-lite")
    with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):
        client.predict("evil", api_name="/set_baseline")  # Gradio's picker refuses it before the app
    chart, _, trace = client.predict("none", api_name="/set_baseline")
    assert len(_lines(chart)) == 2 and _file(trace)["what_matters"]["baseline"] is None


# ------------------------------------------------------------------------------ isolation and attacks
def test_one_visitors_mark_or_truth_never_reaches_another_session(server, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    a, b = Client(server.url, verbose=False), Client(server.url, verbose=False)
    results = {}

    def visitor_a():
        results["a"] = a.predict("what color is the star ?", handle_file(str(EXAMPLES / "shapes_0_color.png")),
                                 api_name="/chat")
        results["a-box"] = a.predict(0, 0, 64, 64, LAST_DROP, FIRST_DROP, api_name="/mark_box")

    def visitor_b():
        results["b"] = b.predict("what color is the star ?", handle_file(str(tmp_path / "noise.png")),
                                 api_name="/chat")

    threads = [threading.Thread(target=visitor_a), threading.Thread(target=visitor_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert "Hand-marked" in results["a-box"][M_NOTE]
    assert results["b"][MATTERS] is None and "what_matters" not in _file(results["b"][TRACE_FILE])
    assert "Ground truth" not in results["b"][MATTERS_NOTE] and "Hand-marked" not in results["b"][MATTERS_NOTE]
    again = b.predict("what color is the star ?", None, api_name="/chat")  # after a's mark: still nothing
    assert again[MATTERS] is None and "what_matters" not in _file(again[TRACE_FILE])
    # b's own copy of the gallery picture brings the truth, not a's mark
    own = b.predict("what color is the star ?", handle_file(str(EXAMPLES / "shapes_0_color.png")), api_name="/chat")
    record = _file(own[TRACE_FILE])["what_matters"]
    assert record["source"] == "ground truth" and record["tokens"] == RECORDS["shapes_0_color.png"]["question_patches"]
    fresh = Client(server.url, verbose=False)  # a new visitor with no picture can mark nothing
    assert "No picture to mark" in fresh.predict(0, 0, 10, 10, 0, None, api_name="/mark_box")[M_NOTE]
    cleared = a.predict(LAST_DROP, FIRST_DROP, api_name="/clear_marks")
    assert _file(cleared[M_TRACE])["what_matters"]["source"] == "ground truth"


def test_an_editor_payload_naming_a_server_path_is_refused_without_naming_it(server):
    sessions = server.work / "sessions"
    someone = Client(server.url, verbose=False)
    someone.predict(handle_file(str(EXAMPLES / "shapes_1_count.png")), api_name="/set_image")
    other = next(sessions.glob("*/image-*.png"))  # another visitor's picture in its session folder
    marks_before = sorted(sessions.glob("*/mark-*.png"))
    for path in ("/etc/passwd", str(other), str(sessions / ".." / other.parent.name / other.name)):
        for payload in ({"background": _fd(path), "layers": [_fd(path)], "composite": None},
                        {"background": None, "layers": [_fd(path)], "composite": _fd(path)}):
            stream = raw_call(server, "mark", [payload, 0, None])
            assert "event: error" in stream and "event: complete" not in stream, stream
            assert path not in stream and "root:" not in stream and "/etc" not in stream and "sessions" not in stream
    stream = raw_call(server, "mark", ["/etc/passwd", 0, None])
    assert "event: error" in stream and "/etc" not in stream
    assert sorted(sessions.glob("*/mark-*.png")) == marks_before  # nothing was stored as a mark


def test_an_editor_payload_is_bounded_before_it_is_decoded(server):
    """Gradio's editor would decode any number of layers of any size: the app's reads at most four,
    each at most the largest picture it keeps, refused from the file's header."""
    huge = _upload(server, "layer.png", _png(Image.new("RGBA", (5000, 5000), (0, 0, 0, 0))))  # ~100 kB on disk
    stream = raw_call(server, "mark", [{"background": None, "layers": [_fd(huge)], "composite": None}, 0, None])
    assert "event: error" in stream and "larger than 2048\\u00d72048 pixels" in stream and huge not in stream, stream
    small = _upload(server, "small.png", _png(Image.new("RGBA", (64, 64), (0, 0, 0, 0))))
    stream = raw_call(server, "mark", [{"background": None, "layers": [_fd(small)] * 5, "composite": None}, 0, None])
    assert "event: error" in stream and "at most 4 layers" in stream, stream
    junk = _upload(server, "junk.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    stream = raw_call(server, "mark", [{"background": None, "layers": [_fd(junk)], "composite": None}, 0, None])
    assert "event: error" in stream and "could not be read" in stream and junk not in stream, stream
    # a background or composite is never decoded: the junk there changes nothing (no picture to mark yet)
    stream = raw_call(server, "mark", [{"background": _fd(junk), "layers": [], "composite": _fd(junk)}, 0, None])
    assert "event: complete" in stream and "could not be read" not in stream, stream
