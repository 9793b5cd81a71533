"""The job event, schema version 1: the one flat object every destination receives.

This table is the source of truth; ``blueprints/schema/job-event.v1.schema.json`` and the
table in ``docs/SCHEMA.md`` are written from it by ``bridge schema --write`` (a test checks
they are current). Every key is always present (null when the provider has no value), so
a Make or Zapier data structure never changes between events.
"""

from __future__ import annotations

import re
from typing import Any

SCHEMA_VERSION = 1
ASSET_URL_SLOTS = 10     # asset_url_1 … asset_url_10
PREVIEW_URL_SLOTS = 5    # preview_url_1 … preview_url_5
CUSTOM_KEY = re.compile(r"^x_[a-z0-9_]+$")  # mappings may add x_… keys of their own

# name, JSON type, description. Types: string, number, integer, boolean; all but the
# fields the bridge sets may be null.
_CORE = [
    ("schema_version", "integer", "Version of this schema; 1. Set by the bridge."),
    ("event_id", "string", "The bridge's id of the received callback (evt_…). Also sent as "
     "the Idempotency-Key header. Set by the bridge."),
    ("source", "string", "Which source sent it: the name in /hooks/<source> (ratioready, "
     "zupertry, posternity, upscale, listingrva, …). Set by the bridge."),
    ("event_type", "string", "Normalised event: job.completed, job.failed, or another dotted "
     "name such as job.queued, image.started. Set by the mapping rule."),
    ("status", "string", "Normalised status: completed, failed, queued, processing, started, "
     "approved, … (upscale's 'complete' becomes 'completed')."),
    ("job_id", "string", "The provider's job (or batch, request) id."),
    ("job_type", "string", "Kind of job: wall_art, poster, clipart, try_on, image, video, "
     "messages, listing_image, …"),
    ("credits", "number", "Credits the provider charged for the job (0 when refunded)."),
    ("summary", "string", "One readable line about the event, for alerts and logs."),
    ("asset_count", "integer", "How many result files there are in all (may exceed the "
     "numbered fields)."),
    *[(f"asset_url_{i}", "string", f"Result file {i} (numbered fields stop at "
       f"{ASSET_URL_SLOTS}; all of them are in asset_urls).")
      for i in range(1, ASSET_URL_SLOTS + 1)],
    ("asset_urls", "string", "Every result file URL, one per line."),
    ("preview_count", "integer", "How many previews / mockups there are in all."),
    *[(f"preview_url_{i}", "string", f"Preview or mockup {i} (numbered fields stop at "
       f"{PREVIEW_URL_SLOTS}; all of them are in preview_urls).")
      for i in range(1, PREVIEW_URL_SLOTS + 1)],
    ("preview_urls", "string", "Every preview / mockup URL, one per line."),
    ("video_url", "string", "A video made by the job."),
    ("document_url", "string", "A document made by the job (e.g. a listing-copy PDF)."),
    ("folder_url", "string", "A shared folder holding the results (e.g. Google Drive)."),
    ("error", "string", "Why the job failed, as the provider says it."),
    ("error_code", "string", "A short machine code for the error, when the provider gives one."),
    ("submitted_at", "string", "When the job was submitted (ISO 8601, as the provider sent it)."),
    ("completed_at", "string", "When the job finished (ISO 8601, as the provider sent it)."),
    ("received_at", "string", "When the bridge received the callback (ISO 8601, UTC). Set by "
     "the bridge."),
]
# Provider extras: also always present, null for providers that do not have them.
_EXTRAS = [
    ("provider_event_id", "string", "The provider's own id for this event (posternity)."),
    ("workspace_id", "string", "Workspace of the job (zupertry)."),
    ("org_id", "string", "Organisation of the job (zupertry)."),
    ("style", "string", "Image style key (listingrva), e.g. hero_white_bg."),
    ("platform", "string", "Target marketplace (listingrva), e.g. shopify, amazon."),
    ("asset_ids", "string", "Asset ids, one per line (listingrva: full URLs need its API)."),
    ("requested_count", "integer", "Items requested in the batch (upscale)."),
    ("generated_count", "integer", "Items actually generated (upscale)."),
    ("partial", "boolean", "True when fewer items were generated than requested (upscale)."),
    ("watermark", "string", "Watermark text applied to previews, when the provider says "
     "(ratioready clipart)."),
]

FIELDS: dict[str, str] = {name: kind for name, kind, _ in _CORE + _EXTRAS}
DESCRIPTIONS: dict[str, str] = {name: text for name, _, text in _CORE + _EXTRAS}
EXTRAS: tuple[str, ...] = tuple(name for name, _, _ in _EXTRAS)
SET_BY_BRIDGE = ("schema_version", "event_id", "source", "event_type", "received_at")
NOT_NULL = SET_BY_BRIDGE


def numbered_slots(base: str) -> int:
    """How many numbered fields ``base_1 … base_N`` the schema has (0 if none)."""
    count = 0
    while f"{base}_{count + 1}" in FIELDS:
        count += 1
    return count


def is_output_key(name: str) -> bool:
    return name in FIELDS or bool(CUSTOM_KEY.match(name))


def blank_event() -> dict[str, Any]:
    """Every key, in schema order, set to null."""
    return dict.fromkeys(FIELDS)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a version-1 job event."""
    properties: dict[str, Any] = {}
    for name, kind in FIELDS.items():
        prop: dict[str, Any] = {"type": kind if name in NOT_NULL else [kind, "null"],
                                "description": DESCRIPTIONS[name]}
        if name == "schema_version":
            prop["const"] = SCHEMA_VERSION
        if kind == "integer" and name != "schema_version":
            prop["minimum"] = 0
        properties[name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "job-event.v1.schema.json",
        "title": "Job event, schema version 1",
        "description": "The one flat JSON object the bridge sends to Make, n8n, Zapier and "
                       "HTTP destinations, the same keys for every provider. Every key is "
                       "always present (null when the provider has no value). No nested "
                       "objects, no arrays. Mappings may add custom keys starting with x_.",
        "type": "object",
        "properties": properties,
        "required": list(FIELDS),
        "patternProperties": {CUSTOM_KEY.pattern: {"type": ["string", "number", "boolean",
                                                            "null"]}},
        "additionalProperties": False,
    }


def markdown_table() -> str:
    """The readable table of docs/SCHEMA.md."""
    lines = ["| key | type | meaning |", "|---|---|---|"]
    for name, kind in FIELDS.items():
        nullable = "" if name in NOT_NULL else " or null"
        lines.append(f"| `{name}` | {kind}{nullable} | {DESCRIPTIONS[name]} |")
    return "\n".join(lines) + "\n"
