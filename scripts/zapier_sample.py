#!/usr/bin/env python3
"""Write blueprints/zapier/sample-event.v1.json: the flat job event (schema v1) that the
shipped Ratio Ready sample ``wall_art_completed`` becomes with the shipped mapping
(mappings/ratioready.yaml), every key present. This is what a Zapier Catch Hook's test step
should receive. The event id and received time are fixed so the file only changes when the
mapping or the schema does.

    .venv/bin/python scripts/zapier_sample.py           # write it
    .venv/bin/python scripts/zapier_sample.py --check   # exit 1 if the file is stale
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.blueprints import sample_event  # noqa: E402
from bridge.config import load_mappings, load_settings  # noqa: E402

TARGET = REPO / "blueprints" / "zapier" / "sample-event.v1.json"
SOURCE, SAMPLE = "ratioready", "wall_art_completed"
EVENT_ID = "evt_01KAKD0X2V7Q9M3N5P8R4T6W1Y"   # fixed, so the file is stable
RECEIVED_AT = datetime(2026, 11, 20, 9, 19, 48, 512000, tzinfo=UTC).timestamp()


def render() -> str:
    settings = load_settings(str(REPO / "bridge.yaml"), environ={})
    event = sample_event(settings, load_mappings(settings), SOURCE, SAMPLE,
                         event_id=EVENT_ID, received_at=RECEIVED_AT)
    return json.dumps(event, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(REPO)} is stale: run scripts/zapier_sample.py")
            return 1
        print(f"{TARGET.relative_to(REPO)} is current")
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
