"""The running app (subprocess on 127.0.0.1, free port) under several users at once: every request
is answered, in queue order, and each session keeps its own model, schedule, chat and trace.
Also: bad input over the API gets a message and the app keeps serving."""

import json
import threading
import time
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

import tiny_models  # noqa: E402
from app_server import AppServer  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
QUESTIONS = json.loads((EXAMPLES / "shapes_questions.json").read_text())
CHAT_FULL, CHAT_DROP, NOTICE, TRACE_FILE = 0, 1, 2, 14


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("app") / "app.log"
    app = AppServer(log_path=log, env={"V2DROP_ALLOW_LOCAL_FOLDERS": "1"})  # session 3 loads a tiny local folder
    yield app
    app.stop()


def _texts(messages):
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
        out.append((m["role"], content))
    return out


def test_concurrent_sessions_are_queued_in_order_and_kept_apart(server, tmp_path):
    tiny_dir = tiny_models.build("llava", tmp_path)[0] and tmp_path / "llava"
    names = ["shapes_0_color.png", "shapes_1_count.png", "shapes_2_position.png", "shapes_3_exist.png"]
    schedules = ["2:0.6,4:0.5,6:0.3", "1:0.1,3:0.2,5:0", "3:0.5", "2:0.25,4:0.4"]  # session 3: 6 layers
    clients = [Client(server.url, verbose=False) for _ in names]
    # session 3 switches to another model (a local folder); the others stay on the embedded one
    loaded = clients[3].predict(str(tiny_dir), False, api_name="/switch_model")
    assert "Loaded" in loaded[5], loaded[5]
    for client, schedule in zip(clients, schedules):
        info = client.predict(schedule, api_name="/set_schedule")
        assert "Average vision tokens kept" in info, info

    started_at, results, errors = {}, {}, {}

    def wait(i, job):
        try:  # the first streamed update marks when the server started this request
            while not job.done() and not job.outputs():
                time.sleep(0.01)
            started_at[i] = time.monotonic()
            results[i] = job.result(timeout=240)
        except Exception as err:  # noqa: BLE001
            errors[i] = err

    threads = []
    for i, (client, name) in enumerate(zip(clients, names)):
        job = client.submit(QUESTIONS[name]["question"], handle_file(str(EXAMPLES / name)), api_name="/chat")
        threads.append(threading.Thread(target=wait, args=(i, job)))
        threads[-1].start()
        time.sleep(0.4)  # fixes the order in which the requests join the queue
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3], f"lost requests; log: {server.log_text()}"
    assert sorted(started_at, key=started_at.get) == [0, 1, 2, 3], "not served in queue order"

    for i, name in enumerate(names):
        out = results[i]
        notice = out[NOTICE]
        assert f"Done with `{schedules[i]}`" in notice, notice
        assert (str(tiny_dir) in notice) == (i == 3)
        for pane in (out[CHAT_FULL], out[CHAT_DROP]):
            msgs = _texts(pane)
            assert [r for r, _ in msgs] == ["user", "assistant"]
            assert msgs[0][1] == QUESTIONS[name]["question"]  # its own question, nobody else's
        trace = json.loads(Path(out[TRACE_FILE]).read_text())
        assert trace["schedule"] == schedules[i]
        assert trace["num_layers"] == (6 if i == 3 else 8)

    # a second turn in session 0 continues its own chat only
    out = clients[0].predict("what color is the circle ?", None, api_name="/chat")
    assert len(out[CHAT_FULL]) == 4 and len(out[CHAT_DROP]) == 4
    assert _texts(out[CHAT_FULL])[2][1] == "what color is the circle ?"
    out1 = clients[1].predict("how many stars are there ?", None, api_name="/chat")
    assert len(out1[CHAT_FULL]) == 4 and _texts(out1[CHAT_FULL])[0][1] == QUESTIONS[names[1]]["question"]


def test_bad_input_gets_a_message_and_the_app_keeps_serving(server, tmp_path):
    client = Client(server.url, verbose=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    good = handle_file(str(EXAMPLES / "shapes_0_color.png"))
    cases = [
        (("what is it ?", handle_file(str(broken))), "not a readable image"),
        (("what is it ?", None), "No image"),
        (("   ", good), "question is empty"),
        (("x" * 5000, good), "limit is"),
    ]
    for args, message in cases:
        out = client.predict(*args, api_name="/chat")
        assert message in out[NOTICE], out[NOTICE]
        assert "Traceback" not in out[NOTICE]
    assert "cannot run" in client.predict("0:0.5", api_name="/set_schedule")
    out = client.predict("what color is the star ?", good, api_name="/chat")
    assert "cannot run" in out[NOTICE] and "layer 0" in out[NOTICE]
    failed = client.predict("nobody/no-such-model-v2drop", False, api_name="/switch_model")
    assert "could not" in failed[5] or "not in the local" in failed[5] or "not a known" in failed[5], failed[5]
    assert "stays loaded" in failed[5]
    client.predict("2:0.5", api_name="/set_schedule")
    out = client.predict("what color is the star ?", good, api_name="/chat")
    assert "Done with `2:0.5`" in out[NOTICE], out[NOTICE]
