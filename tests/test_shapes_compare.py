"""``shapes.compare``: the docs' comparison tables come from the report cards and sweeps."""

import json

from shapes import compare


def _card(acc: float) -> dict:
    part = {"n": 4, "accuracy": {"all": acc, "type=color": 1.0, "type=count": 0.5, "background=white": 0.25},
            "not_one_word": 2}
    return {"benchmark": part, "drawn": part,
            "variation": [{"layer": 1, "object": 25.0, "background": 20.0, "object_in_top_half": 0.6}]}


def _sweep() -> dict:
    row = {"budget": 0.5, "first_layer": 1, "method": "v2drop", "reachable": True, "relative": 0.968,
           "recall_at_first_drop": 0.716}
    late = {**row, "first_layer": 5, "reachable": False, "relative": None, "recall_at_first_drop": None}
    return {"n": 1200, "methods": ["v2drop", "random"], "unpruned": {"accuracy": 0.911}, "rows": [row, late]}


def test_tables_carry_every_number(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_card(0.9)))
    (tmp_path / "s.json").write_text(json.dumps(_sweep()))
    text = compare.main([f"shipped={tmp_path / 'a.json'},{tmp_path / 's.json'}", f"other={tmp_path / 'a.json'}"])
    assert "| shipped | benchmark (4) | 90.0 | 100.0 | 50.0 | – | – | 2 |" in text
    assert "| shipped | 25.0 | –" in text  # white 25 %, black not measured
    assert "| shipped | 1 | 25.0 | 20.0 | 60 % |" in text
    assert "| 0.50 | 1 | 96.8 (71.6) | – |" in text and "| 0.50 | 5 | unreachable | – |" in text
    assert text.count("other") == 4  # two accuracy rows, one drawn row, one variation row; no sweep
