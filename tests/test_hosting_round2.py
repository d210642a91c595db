"""Hosting safety, round two (issue 26): the attacks that broke the promises of docs/app.md, made again
through the HTTP API against ``python app.py`` started as a Space runs it (``SPACE_ID`` set; typed hub
ids opted in, as an operator may), never by calling the app's functions.

Each test names the attack it repeats; memory, disk and log growth are measured where the attack
was about them.
"""

import json
import secrets
import time
import urllib.error
import urllib.request
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
av = pytest.importorskip("av")
from gradio_client import Client, handle_file  # noqa: E402

from app_server import AppServer, queue_call, raw_call, upload_then_close_tab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "examples" / "shapes_0_color.png"
NOTICE = 3  # /set_image and /set_video answers: preview, two panes, notice


@pytest.fixture(scope="module")
def outbound():
    """A stand-in for the internet: the app's HTTP(S) proxy, which records every request the server
    makes to an outside host (Gradio's URL check falls back to DNS-over-HTTPS through it)."""
    import socketserver
    import threading

    seen: list[str] = []

    class Record(socketserver.BaseRequestHandler):
        def handle(self):
            seen.append(self.request.recv(256).split(b"\r\n")[0].decode(errors="replace"))

    proxy = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{proxy.server_address[1]}", seen
    proxy.shutdown()


@pytest.fixture(scope="module")
def space(tmp_path_factory, outbound):
    work = tmp_path_factory.mktemp("space")
    server = AppServer(log_path=work / "app.log", env={
        "SPACE_ID": "someone/v2drop-studio", "V2DROP_ALLOW_HUB_IDS": "1",
        "GRADIO_TEMP_DIR": str(work / "gradio"), "V2DROP_SESSION_DIR": str(work / "sessions"),
        "HTTPS_PROXY": outbound[0], "HTTP_PROXY": outbound[0], "NO_PROXY": "127.0.0.1,localhost"})
    server.work = work
    yield server
    server.stop()


def _post(server: AppServer, route: str, body: bytes, content_type: str = "application/json",
          length: int | None = None) -> tuple[int, str]:
    """POST ``body`` (declared as ``length`` bytes, its own length by default) and read the answer,
    also when the server answers before reading it all (a body it refused unread)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/" + route)
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(len(body) if length is None else length))
    conn.endheaders()
    try:
        conn.send(body)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = conn.getresponse()
    status, text = reply.status, reply.read().decode()
    conn.close()
    return status, text


def _post_declared(server: AppServer, route: str, length: int, first: bytes = b'{"data": ["') -> tuple[int, str]:
    """Declare a body of ``length`` bytes and send only its start."""
    return _post(server, route, first, length=length)


def _join(server: AppServer, fn: str, data: list, **extra) -> tuple[int, str]:
    """POST one event to the queue as the page does; (status, body) without reading the stream."""
    from app_server import fn_index
    body = {"data": data, "fn_index": fn_index(server, fn), "session_hash": secrets.token_hex(8),
            "event_data": None, "trigger_id": None, **extra}
    return _post(server, "gradio_api/queue/join", json.dumps(body).encode())


def _status(server: AppServer, key: str) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    raise KeyError(key)


def _peak_mb_during(server: AppServer, action) -> tuple[float, float, float]:
    """(RSS before, peak RSS while ``action`` runs, RSS after), MiB: the peak is reset first."""
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status(server, "VmRSS")
    action()
    return before, _status(server, "VmHWM"), _status(server, "VmRSS")


def _log_size(server: AppServer) -> int:
    return server.log_path.stat().st_size


def _tracebacks(server: AppServer) -> int:
    return server.log_text_full().count("Traceback")


# ------------------------------------------------------------------------------ 1. videos
def _lying_mkv(path: Path, sides=(64, 64, 4000, 4000)) -> Path:
    """A Matroska file whose stream header (and first frames) say 64×64, then MJPEG frames of 4000×4000."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuvj420p"
        for i, side in enumerate(sides):
            encoder = av.CodecContext.create("mjpeg", "w")
            encoder.width = encoder.height = side
            encoder.pix_fmt, encoder.time_base = "yuvj420p", Fraction(1, 8)
            frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), 60 * i, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuvj420p")
            frame.pts = 0
            for packet in [*encoder.encode(frame), *encoder.encode()]:
                packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 8)
                out.mux(packet)
    return path


def _one_keyframe_1080p(path: Path, frames: int = 320) -> Path:
    """1080p H.264 whose only keyframe is the first frame (more frames than the app's seek threshold)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "35",
                          "x264-params": "keyint=100000:min-keyint=100000:scenecut=0"}
        picture = np.zeros((1080, 1920, 3), np.uint8)
        for i in range(frames):
            picture[:] = 0
            picture[100:300, (i * 5) % 1700:(i * 5) % 1700 + 200, 0] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_decoded_video_frames_obey_the_frame_limit(space, tmp_path):
    video = _lying_mkv(tmp_path / "lying.mkv")
    client = Client(space.url, verbose=False)
    notes = []
    before, peak, after = _peak_mb_during(
        space, lambda: notes.append(client.predict(handle_file(str(video)), 8, api_name="/set_video")[NOTICE]))
    assert "cannot be used" in notes[0] and "4000x4000" in notes[0] and "pixel limit" in notes[0], notes[0]
    assert peak - before < 400, (before, peak, after)  # one 4000×4000 frame decoded, none converted or kept
    assert after - before < 100, (before, peak, after)


def test_a_video_with_one_keyframe_is_decoded_once_not_once_per_frame(space, tmp_path):
    from v2drop.video import VideoLimits, load_video

    video = _one_keyframe_1080p(tmp_path / "onekey.mp4")
    sampled = load_video(video, num_frames=32, max_side=256)
    assert sampled.total_frames == 320 and len(sampled) == 32
    assert sampled.extra["decoded_frames"] <= 320  # seeking would decode from the start 32 times (~5,000)
    with pytest.raises(ValueError, match="takes more than the 0 s this server allows"):
        load_video(video, num_frames=32, limits=VideoLimits(max_decode_seconds=0.0))
    out = Client(space.url, verbose=False).predict(handle_file(str(video)), 32, api_name="/set_video")
    assert out[0] and "cannot be used" not in out[NOTICE], out[NOTICE]  # sampled (the embedded model takes no video)


# ------------------------------------------------------------------------------ 2. the mark editor's blobs
def _editor_id(server: AppServer) -> int:
    config = json.loads(urllib.request.urlopen(server.url + "config", timeout=10).read())
    return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "mark-editor")


def _accept_blobs(server: AppServer, index: str, blob: bytes = b"\x89PNG not really") -> tuple[int, str]:
    boundary = "v2dropblobs"
    fields = {"component_id": str(_editor_id(server)), "session_hash": "blobs", "fn_name": "accept_blobs",
              "type": "layer", "index": index, "id": "stroke-1"}
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
                    for k, v in fields.items())
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n"
             "Content-Type: image/png\r\n\r\n").encode() + blob + f"\r\n--{boundary}--\r\n".encode()
    return _post(server, "gradio_api/component_server", body, f"multipart/form-data; boundary={boundary}")


def test_mark_upload_route_refuses_an_index_beyond_the_layer_limit(space):
    assert _accept_blobs(space, "0")[0] == 200  # the page's own stroke still goes through
    before = space.rss_mb()
    for _ in range(5):
        status, text = _accept_blobs(space, "10000000")
        assert status == 400 and "at most 4 layers" in text, (status, text)
    assert space.rss_mb() - before < 30  # was about 76 MB per request, never freed


# ------------------------------------------------------------------------------ 3. text, bodies, logs
def test_long_text_is_refused_before_it_is_stored_or_echoed(space):
    schedule = json.dumps({"data": ["2:0.5," * 3_500_000, None]}).encode()  # a 20 MB schedule
    before = space.rss_mb()
    for _ in range(5):
        status, text = _post(space, "gradio_api/call/set_schedule", schedule)
        assert status == 413 and len(text) < 200, (status, text[:200])  # refused unread, not echoed
    assert space.rss_mb() - before < 20  # was 320 MB held in Gradio's per-session values
    status, text = _post(space, "gradio_api/call/set_schedule", json.dumps({"data": ["1" * 20000, None]}).encode())
    assert status == 413 and "20,000 characters" in text and "1111" not in text, text
    answer = raw_call(space, "set_schedule", ["2:0.5," * 50, None])  # 300 characters: the handler's own cap
    assert "the limit is 200" in answer and "2:0.5,2:0.5" not in answer, answer[:500]
    out = Client(space.url, verbose=False).predict("x" * 1500, None, api_name="/chat")
    assert "1,500 characters" in out[2] or "1500 characters" in out[2], out[2]


def test_one_request_logs_a_bounded_amount(space):
    size = _log_size(space)
    layers = {"background": None, "layers": [None] * 100_000, "composite": None, "id": None}
    status, _ = _join(space, "mark", [layers, 0, None, None])
    assert status == 413
    assert _log_size(space) - size < 1000  # was 26 MB
    status, _ = _join(space, "mark", [{"background": None, "layers": [None] * 64, "composite": None,
                                       "id": None}, 0, None, None])
    time.sleep(2)
    assert _log_size(space) - size < 64 * 1024
    status, text = _post_declared(space, "gradio_api/call/set_schedule", 1_200_000, b"[0,0,0")
    assert status == 413, (status, text)


# ------------------------------------------------------------------------------ 4. deep links
def test_deep_links_are_off_and_leave_nothing_behind(space):
    client = Client(space.url, verbose=False)
    client.predict("2:0.5", api_name="/set_schedule")
    for session in (client.session_hash, "anything"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(space.url + f"gradio_api/deep_link?session_hash={session}", timeout=10)
        assert refused.value.code == 404
    assert not list((space.work / "gradio").rglob("state.json"))


# ------------------------------------------------------------------------------ 5. released sessions
def test_a_released_session_is_never_reopened(space):
    client, before = upload_then_close_tab(space, str(EXAMPLE))
    root = space.work / "sessions"
    # a handler of that session that runs afterwards (it was queued, or decoding a large picture)
    messages = queue_call(space, "set_image", [None, None], session_hash=client.session_hash)
    assert "session has ended" in json.dumps(messages), messages
    assert {p.name for p in root.iterdir()} - before == set()  # nothing re-created


# ------------------------------------------------------------------------------ 6. typed ids
def test_typed_ids_get_one_answer_whether_a_relative_folder_exists_or_not(space):
    """Neither the load nor the memory estimate reads a relative folder named like the typed id: one
    with the config of a 70B model (which the memory budget would refuse) answers as a missing one."""
    from transformers import LlavaConfig

    huge = f"tests/zz-v2drop-{secrets.token_hex(4)}"
    LlavaConfig(text_config={"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80,
                             "intermediate_size": 28672, "num_attention_heads": 64, "vocab_size": 32000}
                ).save_pretrained(ROOT / huge)
    client = Client(space.url, verbose=False)
    answers = {}
    try:
        for model_id in ("tests/e2e", "assets/examples", "assets/shapes-llava", huge, "tests/zzzz", "assets/nope"):
            assert (ROOT / model_id).is_dir() == (model_id not in ("tests/zzzz", "assets/nope"))
            answers[model_id] = client.predict(model_id, False, api_name="/switch_model")[5].replace(model_id, "ID")
    finally:
        import shutil
        shutil.rmtree(ROOT / huge)
    assert len(set(answers.values())) == 1, answers
    assert "stays loaded" in answers["tests/e2e"] and "needs about" not in answers[huge]


# ------------------------------------------------------------------------------ 7. decode memory
def test_a_16_bit_picture_is_decoded_within_a_memory_bound(space, tmp_path):
    ramp = np.tile(np.linspace(0, 4000, 7000).astype(np.uint16), (7000, 1))  # 49 MP, under the 50 MP limit
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    client = Client(space.url, verbose=False)
    notes = []
    before, peak, after = _peak_mb_during(
        space, lambda: notes.append(client.predict(handle_file(str(tmp_path / "deep.png")), api_name="/set_image")[3]))
    assert "downscaled to 2048×2048" in notes[0] and "scaled to 8 bits" in notes[0], notes[0]
    assert peak - before < 400, (before, peak, after)  # was 2.1 GB over the resting RSS (measured: 250 MB)
    again = _peak_mb_during(space, lambda: client.predict(handle_file(str(tmp_path / "deep.png")),
                                                           api_name="/set_image"))
    assert again[2] - after < 30, (after, again)  # what the allocator kept is reused, not added to
    rgba = tmp_path / "wide.png"
    Image.new("RGBA", (8000, 6000), (10, 20, 30, 255)).save(rgba)  # 48 MP, 4 bytes a pixel: 183 MB
    note = client.predict(handle_file(str(rgba)), api_name="/set_image")[3]
    assert "too large to decode safely" in note and "MB" in note, note


# ------------------------------------------------------------------------------ 8. odd values
def test_odd_values_never_reach_a_traceback(space):
    before = _tracebacks(space)
    for model_id in ({"a": 1}, ["a"]):
        assert _join(space, "switch_model", [model_id, False, None])[0] == 400
    nan = {"data": [0, None], "fn_index": 0, "session_hash": "nan", "event_data": None, "trigger_id": None}
    from app_server import fn_index
    for name in ("on_layer", "on_tick"):
        nan["fn_index"] = fn_index(space, name)
        body = json.dumps(nan).replace("[0, null]", "[NaN, null]").encode()
        assert _post(space, "gradio_api/queue/join", body)[0] == 400
        assert _join(space, name, [None, None])[0] == 400
    assert _join(space, "on_drop_layer", [{"x": 1}, None])[0] == 400
    for event, data, event_data in (("switch_model", [3, False, None], None), ("on_play", [None, 0, None], None),
                                    ("on_layer", [1e9, None], None), ("on_drop_layer", ["abc", None], None),
                                    ("on_example", [], {"index": 999, "value": None}),
                                    ("on_example", [], {"index": "x", "value": None}),
                                    ("on_picture_click", [0, None, None], {"index": "zz", "value": None}),
                                    ("on_picture_click", [0, None, None], {"index": [1], "value": None})):
        messages = queue_call(space, event, data, event_data=event_data)
        assert messages and messages[-1]["msg"] == "process_completed", (event, messages)
    time.sleep(1)
    assert _tracebacks(space) == before, space.log_text()


# ------------------------------------------------------------------------------ 9. outbound traffic
def test_url_file_data_is_refused_before_any_lookup(space, outbound):
    """Before, each loopback spelling sent as file data cost one DNS-over-HTTPS request to dns.google
    (seen by the stand-in proxy as ``CONNECT dns.google:443``)."""
    for host in ("127.0.0.1", "localhost", "127.1", "0x7f000001", "example.invalid"):
        raw = {"path": f"http://{host}:1/x.png", "meta": {"_type": "gradio.FileData"}}
        for api, data in (("set_image", [raw, None]), ("chat", ["what is it ?", raw, None])):
            status, text = _post(space, f"gradio_api/call/{api}", json.dumps({"data": data}).encode())
            assert status == 400 and "does not fetch files from URLs" in text, (status, text)
        status, _ = _join(space, "set_image", [raw, None])
        assert status == 400
        with pytest.raises(urllib.error.HTTPError) as refused:  # Gradio's file route would fetch it
            urllib.request.urlopen(space.url + f"gradio_api/file=http://{host}:1/x.png", timeout=10)
        assert refused.value.code == 403
    assert outbound[1] == [], outbound[1]


# ------------------------------------------------------------------------------ 10. monitoring
def test_monitoring_is_off_on_a_public_host_unless_the_operator_asks(space):
    for route in ("monitoring/summary", "monitoring"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(space.url + route, timeout=10)
        assert refused.value.code == 403
    import argparse

    from studio.hosting import HostingPolicy, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    policy = lambda argv, host, **env: HostingPolicy.from_args(parser.parse_args(argv), host, env)  # noqa: E731
    assert not policy([], "0.0.0.0").monitoring and not policy([], "127.0.0.1", SPACE_ID="a/b").monitoring
    assert policy([], "127.0.0.1").monitoring
    assert policy(["--monitoring"], "0.0.0.0").monitoring and policy([], "0.0.0.0", V2DROP_MONITORING="1").monitoring


# ------------------------------------------------------------------------------ the edge's rules, one by one
@pytest.mark.parametrize("body, status", [
    (b'{"data": [NaN]}', 400), (b'{"data": [1e400]}', 400), (b'{"data": [-Infinity]}', 400),
    (b'{"data": [{"path": "HTTPS://example.com/x.png"}]}', 400), (b'{"data": [{"path": "//example.com/x"}]}', 400),
    (b'{"data": ["' + b"x" * 16385 + b'"]}', 413), (b'{"data": [' + b"0," * 64 + b'0]}', 413),
    (b'[' * 200 + b']' * 200, 413), (b'[' * 30000 + b']' * 30000, 413),
])
def test_the_edge_refuses_what_breaks_a_rule(body, status):
    from studio.edge import EdgeRefusal, check_json

    with pytest.raises(EdgeRefusal) as refused:
        check_json(body)
    assert refused.value.status == status


def test_the_edge_lets_ordinary_requests_and_non_json_through():
    from studio.edge import check_event, check_json

    page = {"data": ["what is it ?", {"path": "/tmp/gradio/abc/x.png", "url": "http://127.0.0.1/gradio_api/file=x",
                                      "meta": {"_type": "gradio.FileData"}}, None],
            "fn_index": 3, "session_hash": "abc", "event_data": {"index": [10.5, 20], "value": None}}
    assert check_json(json.dumps(page).encode()) == page  # a URL in "url" (the page's own) is not fetched
    assert check_json(b"not json") is None
    check_event(("textbox", "file", "state"), page["data"])


def test_released_keys_are_never_reopened_and_remembered_within_a_bound(tmp_path):
    from studio.sessions import SessionClosed, SessionStore

    store = SessionStore(tmp_path, max_sessions=1)
    store.max_released = 3
    for key in "abcde":  # each open releases the one before (one session at most)
        store.open(key)
    for key in "bcd":
        with pytest.raises(SessionClosed):
            store.new_file(key, "image", ".png")
    assert len(list(tmp_path.iterdir())) == 1  # e's folder only: nothing re-created
    assert store.open("a").folder.exists()  # forgotten beyond the bound: a new session, a new folder
