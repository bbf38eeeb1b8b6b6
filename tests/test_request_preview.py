"""Notebook image outputs as the review page receives them: PNG and JPEG checked and capped, SVG as text."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from saferoom.requests.preview import IMAGE_BYTES, preview

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a4"
                    "5e0000000049454e44ae426082")


def outputs(tmp_path: Path, *data: dict) -> list[dict]:
    path = tmp_path / "n.ipynb"
    cells = [{"cell_type": "code", "source": "x", "outputs": [{"output_type": "display_data", "data": d} for d in data]}]
    path.write_text(json.dumps({"cells": cells}))
    shown = preview(path)
    assert shown["kind"] == "notebook"
    return list(shown["cells"][0]["outputs"])


def test_png_and_jpeg_outputs_go_out_checked(tmp_path: Path) -> None:
    encoded = base64.b64encode(PNG).decode()
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 20
    png, jpg, wrapped = outputs(tmp_path, {"image/png": encoded}, {"image/jpeg": base64.b64encode(jpeg).decode()},
                                {"image/png": [encoded[:30] + "\n", encoded[30:]]})  # split in lines, as nbformat may
    assert png["image"] == {"type": "image/png", "base64": encoded}
    assert jpg["image"]["type"] == "image/jpeg" and base64.b64decode(jpg["image"]["base64"]) == jpeg
    assert wrapped["image"] == png["image"]


def test_what_is_not_the_image_it_claims_is_not_sent(tmp_path: Path) -> None:
    fake, broken, huge = outputs(tmp_path, {"image/png": base64.b64encode(b"<svg onload=alert(1)>").decode()},
                                 {"image/jpeg": "not base64 \"'><script>"},
                                 {"image/png": base64.b64encode(PNG + b"\0" * IMAGE_BYTES).decode()})
    assert fake["image"] is None and "is not" in fake["note"]
    assert broken["image"] is None and "is not" in broken["note"]
    assert huge["image"] is None and "over" in huge["note"]


def test_svg_goes_out_as_text(tmp_path: Path) -> None:
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    alone, beside = outputs(tmp_path, {"image/svg+xml": [svg[:10], svg[10:]]},
                            {"image/svg+xml": svg, "image/png": base64.b64encode(PNG).decode()})
    assert alone["svg"] == svg and "image" not in alone  # never drawn
    assert beside["image"]["type"] == "image/png" and "svg" not in beside  # the same figure as a PNG is shown instead
