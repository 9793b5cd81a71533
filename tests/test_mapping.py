"""The shipped mappings on the shipped samples, the mapping helpers, and hot reload.

Every expected event below is written by hand from the sample JSON files and the
mapping YAML, never computed by bridge code: the all-null base comes from the "required"
list of the committed JSON Schema, and each case lists every non-null key with its value.
``received_at`` is fixed by passing RECEIVED_AT to Mapping.apply.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from bridge.errors import ConfigErrors, MappingError
from bridge.mapping import Mappings, load_mapping

REPO = Path(__file__).resolve().parents[1]
MAPPINGS = REPO / "mappings"
SAMPLES = REPO / "bridge" / "samples"
SCHEMA = json.loads((REPO / "blueprints/schema/job-event.v1.schema.json").read_text("utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)

EVENT_ID = "evt_test_0001"
RECEIVED_AT = 1795263015.25               # 2026-11-21 12:10:15.250 UTC
RECEIVED_ISO = "2026-11-21T12:10:15.250Z"


def blank() -> dict:
    return dict.fromkeys(SCHEMA["required"])


def expected(source: str, event_type: str, **values) -> dict:
    event = blank()
    event.update(schema_version=1, event_id=EVENT_ID, source=source, event_type=event_type,
                 received_at=RECEIVED_ISO)
    for key in values:
        assert key in event, f"test bug: {key} is not a schema key"
    event.update(values)
    return event


def assert_same_event(actual: dict, wanted: dict) -> None:
    """Equal, key by key, and of the same JSON types (0 is not false, 12 is not 12.0)."""
    assert actual is not None
    assert set(actual) == set(wanted)
    different = {k: (actual[k], wanted[k]) for k in wanted
                 if actual[k] != wanted[k] or type(actual[k]) is not type(wanted[k])}
    assert not different, different
    assert not list(VALIDATOR.iter_errors(actual))


def mapping(provider: str):
    return load_mapping(MAPPINGS / f"{provider}.yaml")


def sample(provider: str, name: str) -> dict:
    return json.loads((SAMPLES / provider / f"{name}.json").read_text("utf-8"))


def run(provider: str, name: str):
    return mapping(provider).apply(sample(provider, name), EVENT_ID, provider, RECEIVED_AT)


def lines(*urls: str) -> str:
    return "\n".join(urls)


# -- 1. every shipped sample maps, or is filtered as the mapping's comments say ----------

FILTERED = None
# Written by hand from the comments of mappings/*.yaml: ratioready forwards completed and
# failed only; posternity filters *.started and batch progress.
OUTCOMES = {
    "listingrva/image_generated": "job.completed",
    "listingrva/image_generated_multi": "job.completed",
    "posternity/error": "job.failed",
    "posternity/image_generation_completed": "job.completed",
    "posternity/image_generation_failed": "job.failed",
    "posternity/image_generation_started": FILTERED,
    "posternity/map_content_completed": "job.completed",
    "posternity/studio_batch_progress": FILTERED,
    "posternity/studio_campaign_completed": "job.completed",
    "posternity/studio_client_approved": "studio.approved",
    "posternity/video_processing_completed": "job.completed",
    "posternity/video_processing_started": FILTERED,
    "ratioready/clipart_completed": "job.completed",
    "ratioready/job_failed": "job.failed",
    "ratioready/job_processing": FILTERED,
    "ratioready/job_queued": FILTERED,
    "ratioready/poster_completed": "job.completed",
    "ratioready/wall_art_completed": "job.completed",
    "upscale/batch_complete": "job.completed",
    "upscale/batch_partial": "job.completed",
    "zupertry/job_completed": "job.completed",
    "zupertry/job_failed": "job.failed",
}
SAMPLE_FILES = sorted(SAMPLES.glob("*/*.json"))


def test_the_schema_file_is_a_valid_draft_2020_12_schema():
    Draft202012Validator.check_schema(SCHEMA)


def test_every_provider_has_a_mapping_and_samples():
    providers = sorted({p.parent.name for p in SAMPLE_FILES})
    assert providers == ["listingrva", "posternity", "ratioready", "upscale", "zupertry"]
    assert sorted(p.stem for p in MAPPINGS.glob("*.yaml")) == providers
    assert sorted(f"{p.parent.name}/{p.stem}" for p in SAMPLE_FILES) == sorted(OUTCOMES)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_sample_maps_to_a_valid_event_or_is_filtered(path):
    provider, name = path.parent.name, path.stem
    result = mapping(provider).apply(json.loads(path.read_text("utf-8")), EVENT_ID,
                                     provider, RECEIVED_AT)
    wanted = OUTCOMES[f"{provider}/{name}"]
    if wanted is FILTERED:
        assert result.event is None
        assert result.rule is None
        return
    assert result.event is not None, f"filtered; tried {result.tried}"
    assert result.event["event_type"] == wanted
    errors = [e.message for e in VALIDATOR.iter_errors(result.event)]
    assert not errors
    assert list(result.event) == SCHEMA["required"]  # every key, in schema order
    json.dumps(result.event, allow_nan=False)


# -- 2. hand-written events --------------------------------------------------------------

RR = "https://cdn.ratioready.com/jobs"


def test_ratioready_wall_art():
    prints = [f"{RR}/rr_job_7f3c9a21/print/{size}-300dpi.jpg"
              for size in ("2x3", "3x4", "4x5", "11x14", "iso-a1")]
    mockups = [f"{RR}/rr_job_7f3c9a21/mockups/mockup-{n:02d}.jpg" for n in range(1, 21)]
    assert len(mockups) == 20 and mockups[19].endswith("mockup-20.jpg")
    result = run("ratioready", "wall_art_completed")
    assert result.rule == "completed"
    assert_same_event(result.event, expected(
        "ratioready", "job.completed",
        status="completed",
        job_id="rr_job_7f3c9a21",
        job_type="wall_art",
        credits=89,
        summary="wall_art job rr_job_7f3c9a21 completed (89 credits)",
        asset_count=5,
        asset_url_1=f"{RR}/rr_job_7f3c9a21/print/2x3-300dpi.jpg",
        asset_url_2=f"{RR}/rr_job_7f3c9a21/print/3x4-300dpi.jpg",
        asset_url_3=f"{RR}/rr_job_7f3c9a21/print/4x5-300dpi.jpg",
        asset_url_4=f"{RR}/rr_job_7f3c9a21/print/11x14-300dpi.jpg",
        asset_url_5=f"{RR}/rr_job_7f3c9a21/print/iso-a1-300dpi.jpg",
        asset_urls=lines(*prints),
        preview_count=20,
        preview_url_1=f"{RR}/rr_job_7f3c9a21/mockups/mockup-01.jpg",
        preview_url_2=f"{RR}/rr_job_7f3c9a21/mockups/mockup-02.jpg",
        preview_url_3=f"{RR}/rr_job_7f3c9a21/mockups/mockup-03.jpg",
        preview_url_4=f"{RR}/rr_job_7f3c9a21/mockups/mockup-04.jpg",
        preview_url_5=f"{RR}/rr_job_7f3c9a21/mockups/mockup-05.jpg",
        preview_urls=lines(*mockups),
        video_url=f"{RR}/rr_job_7f3c9a21/video/listing-15s-1x1.mp4",
        document_url=f"{RR}/rr_job_7f3c9a21/listing-copy.pdf",
        folder_url="https://drive.google.com/drive/folders/1A2b3C4d5E6f7G8h9I0jKlMnOpQrStUv",
        submitted_at="2026-11-20T09:14:02Z",
        completed_at="2026-11-20T09:19:47Z",
    ))
    assert result.event["preview_urls"].count("\n") == 19


def test_ratioready_poster_has_no_folder():
    mockups = [f"{RR}/rr_job_2b81d6e4/mockups/mockup-{n:02d}.jpg" for n in range(1, 9)]
    result = run("ratioready", "poster_completed")
    assert_same_event(result.event, expected(
        "ratioready", "job.completed",
        status="completed",
        job_id="rr_job_2b81d6e4",
        job_type="poster",
        credits=55,
        summary="poster job rr_job_2b81d6e4 completed (55 credits)",
        asset_count=1,
        asset_url_1=f"{RR}/rr_job_2b81d6e4/print/poster-18x24-300dpi.jpg",
        asset_urls=f"{RR}/rr_job_2b81d6e4/print/poster-18x24-300dpi.jpg",
        preview_count=8,
        preview_url_1=f"{RR}/rr_job_2b81d6e4/mockups/mockup-01.jpg",
        preview_url_2=f"{RR}/rr_job_2b81d6e4/mockups/mockup-02.jpg",
        preview_url_3=f"{RR}/rr_job_2b81d6e4/mockups/mockup-03.jpg",
        preview_url_4=f"{RR}/rr_job_2b81d6e4/mockups/mockup-04.jpg",
        preview_url_5=f"{RR}/rr_job_2b81d6e4/mockups/mockup-05.jpg",
        preview_urls=lines(*mockups),
        submitted_at="2026-11-20T10:02:11Z",
        completed_at="2026-11-20T10:06:30Z",
    ))
    assert result.event["folder_url"] is None


def test_ratioready_clipart_50_images():
    clips = [f"{RR}/rr_job_c45e0f19/clipart/clipart-{n:02d}.png" for n in range(1, 51)]
    previews = [f"{RR}/rr_job_c45e0f19/previews/preview-{n:02d}.jpg" for n in range(1, 11)]
    result = run("ratioready", "clipart_completed")
    assert_same_event(result.event, expected(
        "ratioready", "job.completed",
        status="completed",
        job_id="rr_job_c45e0f19",
        job_type="clipart",
        credits=119,
        summary="clipart job rr_job_c45e0f19 completed (119 credits)",
        asset_count=50,
        asset_url_1=f"{RR}/rr_job_c45e0f19/clipart/clipart-01.png",
        asset_url_2=f"{RR}/rr_job_c45e0f19/clipart/clipart-02.png",
        asset_url_3=f"{RR}/rr_job_c45e0f19/clipart/clipart-03.png",
        asset_url_4=f"{RR}/rr_job_c45e0f19/clipart/clipart-04.png",
        asset_url_5=f"{RR}/rr_job_c45e0f19/clipart/clipart-05.png",
        asset_url_6=f"{RR}/rr_job_c45e0f19/clipart/clipart-06.png",
        asset_url_7=f"{RR}/rr_job_c45e0f19/clipart/clipart-07.png",
        asset_url_8=f"{RR}/rr_job_c45e0f19/clipart/clipart-08.png",
        asset_url_9=f"{RR}/rr_job_c45e0f19/clipart/clipart-09.png",
        asset_url_10=f"{RR}/rr_job_c45e0f19/clipart/clipart-10.png",
        asset_urls=lines(*clips),
        preview_count=10,
        preview_url_1=f"{RR}/rr_job_c45e0f19/previews/preview-01.jpg",
        preview_url_2=f"{RR}/rr_job_c45e0f19/previews/preview-02.jpg",
        preview_url_3=f"{RR}/rr_job_c45e0f19/previews/preview-03.jpg",
        preview_url_4=f"{RR}/rr_job_c45e0f19/previews/preview-04.jpg",
        preview_url_5=f"{RR}/rr_job_c45e0f19/previews/preview-05.jpg",
        preview_urls=lines(*previews),
        folder_url="https://drive.google.com/drive/folders/1ZyXwVuTsRqPoNmLkJiHgFeDcBa987654",
        watermark="PREVIEW",
        submitted_at="2026-11-20T11:30:00Z",
        completed_at="2026-11-20T11:38:12Z",
    ))
    assert len(result.event["asset_urls"].split("\n")) == 50
    assert "asset_url_11" not in result.event


def test_ratioready_failed():
    reason = "Source image is 1200x1800 px; ISO A1 at 300 DPI needs at least 7016x9933 px"
    result = run("ratioready", "job_failed")
    assert result.rule == "failed"
    assert_same_event(result.event, expected(
        "ratioready", "job.failed",
        status="failed",
        job_id="rr_job_9d0e7a55",
        job_type="wall_art",
        credits=0,
        summary=f"wall_art job rr_job_9d0e7a55 failed: {reason}",
        error=reason,
        submitted_at="2026-11-20T12:00:05Z",
        completed_at="2026-11-20T12:01:40Z",
    ))


@pytest.mark.parametrize("name", ["job_queued", "job_processing"])
def test_ratioready_progress_is_filtered(name):
    result = run("ratioready", name)
    assert result.event is None
    assert result.rule is None
    assert result.tried == ("completed", "failed")


ZT = "https://storage.googleapis.com/zupertry-outputs/org_def456/job_abc123/result.png"


def test_zupertry_completed():
    assert_same_event(run("zupertry", "job_completed").event, expected(
        "zupertry", "job.completed",
        status="completed",
        job_id="job_abc123",
        job_type="try_on",
        credits=1,
        summary="Try-on job job_abc123 completed",
        asset_count=1,
        asset_url_1=ZT,
        asset_urls=ZT,
        workspace_id="ws_xyz",
        org_id="org_def456",
        submitted_at="2026-11-20T10:00:00.000Z",
        completed_at="2026-11-20T10:00:05.231Z",
    ))


def test_zupertry_failed_refunds_the_credit():
    reason = "Vertex AI returned an unexpected response format"
    assert_same_event(run("zupertry", "job_failed").event, expected(
        "zupertry", "job.failed",
        status="failed",
        job_id="job_def789",
        job_type="try_on",
        credits=0,
        summary=f"Try-on job job_def789 failed: {reason}",
        error=reason,
        submitted_at="2026-11-20T10:05:00.000Z",
    ))


def test_zupertry_failed_without_credits_gives_0():
    payload = sample("zupertry", "job_failed")
    del payload["data"]["credits_consumed"]
    event = mapping("zupertry").apply(payload, EVENT_ID, "zupertry", RECEIVED_AT).event
    assert event["credits"] == 0 and type(event["credits"]) is int


def test_upscale_full_batch():
    assert_same_event(run("upscale", "batch_complete").event, expected(
        "upscale", "job.completed",
        status="completed",
        job_id="a1b2c3d4-e5f6-7890-abcd-ef1234567890",
        job_type="messages",
        summary="Upscale batch a1b2c3d4-e5f6-7890-abcd-ef1234567890 complete: "
                "12 of 12 messages generated",
        asset_count=12,
        requested_count=12,
        generated_count=12,
        partial=False,
        completed_at="2026-11-21T11:30:45Z",
    ))


def test_upscale_partial_batch():
    assert_same_event(run("upscale", "batch_partial").event, expected(
        "upscale", "job.completed",
        status="completed",
        job_id="0f9e8d7c-6b5a-4321-9876-fedcba098765",
        job_type="messages",
        summary="Upscale batch 0f9e8d7c-6b5a-4321-9876-fedcba098765 complete: "
                "9 of 12 messages generated",
        asset_count=9,
        requested_count=12,
        generated_count=9,
        partial=True,
        completed_at="2026-11-21T12:10:02Z",
    ))


def test_listingrva_one_asset():
    assert_same_event(run("listingrva", "image_generated").event, expected(
        "listingrva", "job.completed",
        status="completed",
        job_id="clx9k2m3n0001qz8h4f5g6j7k",
        job_type="listing_image",
        summary="1 hero_white_bg image(s) for shopify generated "
                "(job clx9k2m3n0001qz8h4f5g6j7k)",
        asset_count=1,
        style="hero_white_bg",
        platform="shopify",
        asset_ids="ast_01HZX3K9P2",
        completed_at="2026-11-21T10:00:00.000Z",
    ))


def test_listingrva_several_assets():
    assert_same_event(run("listingrva", "image_generated_multi").event, expected(
        "listingrva", "job.completed",
        status="completed",
        job_id="clx9k2m3n0002ab1c2d3e4f5g",
        job_type="listing_image",
        summary="4 lifestyle_kitchen image(s) for amazon generated "
                "(job clx9k2m3n0002ab1c2d3e4f5g)",
        asset_count=4,
        style="lifestyle_kitchen",
        platform="amazon",
        asset_ids="ast_01HZX4A1\nast_01HZX4A2\nast_01HZX4A3\nast_01HZX4A4",
        completed_at="2026-11-21T10:05:00.000Z",
    ))


PM = "https://media.posternity.ai"


def test_posternity_image_completed():
    assert_same_event(run("posternity", "image_generation_completed").event, expected(
        "posternity", "job.completed",
        provider_event_id="evt_pst_02",
        status="completed",
        job_id="pst_job_4411",
        job_type="image",
        credits=4,
        summary="Posternity image job pst_job_4411 completed: 2 image(s)",
        asset_count=2,
        asset_url_1=f"{PM}/pst_job_4411/img_1.png",
        asset_url_2=f"{PM}/pst_job_4411/img_2.png",
        asset_urls=f"{PM}/pst_job_4411/img_1.png\n{PM}/pst_job_4411/img_2.png",
        preview_count=1,
        preview_url_1=f"{PM}/pst_job_4411/thumb.jpg",
        preview_urls=f"{PM}/pst_job_4411/thumb.jpg",
        completed_at="2026-11-21T08:00:41Z",
    ))


def test_posternity_video_completed():
    assert_same_event(run("posternity", "video_processing_completed").event, expected(
        "posternity", "job.completed",
        provider_event_id="evt_pst_05",
        status="completed",
        job_id="pst_vid_208",
        job_type="video",
        credits=12,
        summary="Posternity video job pst_vid_208 completed",
        asset_count=1,
        asset_url_1=f"{PM}/pst_vid_208/video.mp4",
        asset_urls=f"{PM}/pst_vid_208/video.mp4",
        video_url=f"{PM}/pst_vid_208/video.mp4",
        preview_count=1,
        preview_url_1=f"{PM}/pst_vid_208/poster.jpg",
        preview_urls=f"{PM}/pst_vid_208/poster.jpg",
        completed_at="2026-11-21T09:03:12Z",
    ))


def test_posternity_image_failed():
    assert_same_event(run("posternity", "image_generation_failed").event, expected(
        "posternity", "job.failed",
        provider_event_id="evt_pst_03",
        status="failed",
        job_id="pst_job_4412",
        job_type="image",
        credits=0,
        summary="Posternity image job pst_job_4412 failed: "
                "The prompt was rejected by the content policy",
        error="The prompt was rejected by the content policy",
        error_code="content_policy",
        completed_at="2026-11-21T08:02:10Z",
    ))


def test_posternity_error_event_uses_the_operation_id():
    assert_same_event(run("posternity", "error").event, expected(
        "posternity", "job.failed",
        provider_event_id="evt_pst_06",
        status="failed",
        job_id="op_77a1",
        job_type="image.generation",
        summary="Posternity image.generation op_77a1 failed: "
                "The rendering service did not answer in time",
        error="The rendering service did not answer in time",
        error_code="upstream_timeout",
        completed_at="2026-11-21T09:10:00Z",
    ))


def test_posternity_campaign_and_approval_and_map():
    assert_same_event(run("posternity", "studio_campaign_completed").event, expected(
        "posternity", "job.completed",
        provider_event_id="evt_pst_07",
        status="completed",
        job_id="pst_cmp_9001",
        job_type="campaign",
        credits=30,
        summary="Campaign cmp_autumn for Maple & Co completed",
        asset_count=3,
        asset_url_1=f"{PM}/cmp_autumn/hero.png",
        asset_url_2=f"{PM}/cmp_autumn/square.png",
        asset_url_3=f"{PM}/cmp_autumn/story.png",
        asset_urls=f"{PM}/cmp_autumn/hero.png\n{PM}/cmp_autumn/square.png\n"
                   f"{PM}/cmp_autumn/story.png",
        folder_url="https://drive.google.com/drive/folders/1PoStErNiTyCaMpAiGn0001",
        completed_at="2026-11-21T10:00:00Z",
    ))
    assert_same_event(run("posternity", "studio_client_approved").event, expected(
        "posternity", "studio.approved",
        provider_event_id="evt_pst_08",
        status="approved",
        job_id="pst_cmp_9001",
        job_type="approval",
        summary="Maple & Co approved template tpl_55",
    ))
    assert_same_event(run("posternity", "map_content_completed").event, expected(
        "posternity", "job.completed",
        provider_event_id="evt_pst_10",
        status="completed",
        job_id="pst_map_77",
        job_type="map_content",
        credits=6,
        summary="Map content job pst_map_77 for region FR completed",
        asset_count=1,
        asset_url_1=f"{PM}/pst_map_77/fr-1.png",
        asset_urls=f"{PM}/pst_map_77/fr-1.png",
        completed_at="2026-11-21T12:00:00Z",
    ))


@pytest.mark.parametrize("name", ["image_generation_started", "video_processing_started",
                                  "studio_batch_progress"])
def test_posternity_progress_is_filtered(name):
    result = run("posternity", name)
    assert result.event is None
    assert result.tried == ("image completed", "image failed", "video completed", "error",
                            "campaign completed", "client approved", "map content completed")


def test_posternity_type_instead_of_event_is_understood():
    payload = sample("posternity", "video_processing_completed")
    payload["type"] = payload.pop("event")
    result = mapping("posternity").apply(payload, EVENT_ID, "posternity", RECEIVED_AT)
    assert result.rule == "video completed"


def test_received_at_is_utc_milliseconds():
    event = mapping("upscale").apply(sample("upscale", "batch_complete"), "e", "upscale",
                                     0.0).event
    assert event["received_at"] == "1970-01-01T00:00:00.000Z"
    event = mapping("upscale").apply(sample("upscale", "batch_complete"), "e", "upscale",
                                     1795263015.999).event
    assert event["received_at"] == "2026-11-21T12:10:15.999Z"


# -- 6. helper semantics ------------------------------------------------------------------

def helper_mapping(tmp_path: Path, fields: str, name: str = "helpers.yaml"):
    """A one-rule mapping whose rule has the given fields (YAML lines)."""
    path = tmp_path / name
    path.write_text("source: test\nrules:\n  - name: only\n    event_type: job.tested\n"
                    "    fields:\n" + textwrap.indent(textwrap.dedent(fields), "      "),
                    encoding="utf-8")
    return load_mapping(path)


def helper_run(tmp_path: Path, fields: str, payload: dict) -> dict:
    result = helper_mapping(tmp_path, fields).apply(payload, EVENT_ID, "test", RECEIVED_AT)
    assert result.rule == "only"
    return result.event


def test_spread_of_a_single_string(tmp_path):
    event = helper_run(tmp_path, "asset_url: {from: url, spread: 3}\n",
                       {"url": "https://x.example/a.png"})
    assert_same_event(event, expected("test", "job.tested",
                                      asset_url_1="https://x.example/a.png"))


def test_spread_skips_nothing_and_pads_with_null_and_default(tmp_path):
    event = helper_run(tmp_path, "preview_url: {from: urls, spread: 4, default: none}\n",
                       {"urls": ["a", None, "", "d", "e"]})
    assert_same_event(event, expected("test", "job.tested", preview_url_1="a",
                                      preview_url_2="none", preview_url_3="none",
                                      preview_url_4="d"))


def test_join_of_null_is_null_and_of_a_list_skips_nulls(tmp_path):
    fields = 'asset_urls: {from: urls, join: "\\n"}\nasset_ids: {from: ids, join: ", "}\n'
    event = helper_run(tmp_path, fields, {"ids": ["a", None, 3, 2.0, True]})
    assert_same_event(event, expected("test", "job.tested", asset_ids="a, 3, 2, true"))


def test_count_of_null_is_0_and_of_one_value_is_1(tmp_path):
    fields = ("asset_count: {from: urls, count: true}\n"
              "preview_count: {from: thumb, count: true}\n")
    event = helper_run(tmp_path, fields, {"thumb": "https://x.example/t.jpg"})
    assert_same_event(event, expected("test", "job.tested", asset_count=0, preview_count=1))
    event = helper_run(tmp_path, fields, {"urls": ["a", None, "b"], "thumb": ""})
    assert_same_event(event, expected("test", "job.tested", asset_count=2, preview_count=0))


def test_map_keeps_an_unmatched_value(tmp_path):
    fields = "status: {from: s, map: {complete: completed, error: failed}}\n"
    event = helper_run(tmp_path, fields, {"s": "queued"})
    assert_same_event(event, expected("test", "job.tested", status="queued"))
    event = helper_run(tmp_path, fields, {"s": "complete"})
    assert_same_event(event, expected("test", "job.tested", status="completed"))


def test_map_with_number_and_true_false_keys(tmp_path):
    fields = ("status: {from: code, map: {1: completed, 2: failed}}\n"
              "summary: {from: ok, map: {true: approved, false: rejected}}\n")
    event = helper_run(tmp_path, fields, {"code": 2, "ok": True})
    assert_same_event(event, expected("test", "job.tested", status="failed",
                                      summary="approved"))
    event = helper_run(tmp_path, fields, {"code": "1", "ok": False})
    assert_same_event(event, expected("test", "job.tested", status="completed",
                                      summary="rejected"))


def test_default_on_empty_string_and_on_missing(tmp_path):
    fields = 'error: {from: e, default: "no reason given"}\ncredits: {from: c, default: 0}\n'
    event = helper_run(tmp_path, fields, {"e": ""})
    assert_same_event(event, expected("test", "job.tested", error="no reason given",
                                      credits=0))
    event = helper_run(tmp_path, fields, {"e": "boom", "c": 3})
    assert_same_event(event, expected("test", "job.tested", error="boom", credits=3))


def test_template_with_literal_braces_and_a_missing_value(tmp_path):
    fields = 'summary: {template: "{{literal}} job {job} for {missing.value}: {{done}}"}\n'
    event = helper_run(tmp_path, fields, {"job": "j1"})
    assert_same_event(event, expected("test", "job.tested",
                                      summary="{literal} job j1 for : {done}"))


def test_template_renders_numbers_lists_and_booleans_as_text(tmp_path):
    fields = 'summary: {template: "{n} {f} {whole} {flag} {items}"}\n'
    event = helper_run(tmp_path, fields,
                       {"n": 3, "f": 2.5, "whole": 4.0, "flag": False, "items": ["a", 1]})
    assert_same_event(event, expected("test", "job.tested", summary="3 2.5 4 false a, 1"))


def test_value_is_fixed(tmp_path):
    event = helper_run(tmp_path, "job_type: {value: try_on}\ncredits: {value: 5}\n", {})
    assert_same_event(event, expected("test", "job.tested", job_type="try_on", credits=5))


def test_integer_coercion(tmp_path):
    fields = "asset_count: n\npreview_count: m\n"
    event = helper_run(tmp_path, fields, {"n": "12", "m": 12.0})
    assert_same_event(event, expected("test", "job.tested", asset_count=12, preview_count=12))


def test_number_and_text_and_boolean_coercion(tmp_path):
    fields = "credits: c\njob_id: id\npartial: p\n"
    event = helper_run(tmp_path, fields, {"c": "2.5", "id": 12345, "p": "TRUE"})
    assert_same_event(event, expected("test", "job.tested", credits=2.5, job_id="12345",
                                      partial=True))


@pytest.mark.parametrize("fields,payload,words", [
    ("credits: c\n", {"c": "abc"}, "field 'credits' must be a number, got 'abc'"),
    ("credits: c\n", {"c": True}, "field 'credits' must be a number"),
    ("job_id: id\n", {"id": ["a", "b"]}, "field 'job_id' got a list"),
    ("summary: s\n", {"s": {"a": 1}}, "field 'summary' got an object"),
    ("asset_count: n\n", {"n": 2.5}, "field 'asset_count' must be a whole number"),
    ("asset_count: n\n", {"n": -1}, "field 'asset_count'"),
    ("partial: p\n", {"p": "maybe"}, "field 'partial' must be true or false"),
    ("x_extra: v\n", {"v": [1]}, "field 'x_extra' got a list"),
])
def test_coercion_failures_are_mapping_errors(tmp_path, fields, payload, words):
    mapping = helper_mapping(tmp_path, fields)
    with pytest.raises(MappingError) as caught:
        mapping.apply(payload, EVENT_ID, "test", RECEIVED_AT)
    assert str(caught.value).startswith(f"{tmp_path / 'helpers.yaml'}:6: ")
    assert words in str(caught.value)


def test_custom_x_field_is_allowed(tmp_path):
    fields = "x_shop: shop\nx_rank: {value: 3}\nx_tag: {from: tags, spread: 2}\n"
    event = helper_run(tmp_path, fields, {"shop": "acme", "tags": ["a", "b", "c"]})
    wanted = expected("test", "job.tested")
    wanted.update(x_shop="acme", x_rank=3, x_tag_1="a", x_tag_2="b")
    assert_same_event(event, wanted)


def test_unknown_field_is_rejected_with_a_hint(tmp_path):
    with pytest.raises(ConfigErrors) as caught:
        helper_mapping(tmp_path, "job_idd: id\n")
    [error] = caught.value.errors
    assert (error.line, error.message, error.hint) == (
        6, "'job_idd' is not a field of the job event schema (v1)", "did you mean 'job_id'?")


def test_when_uses_jmespath_truth(tmp_path):
    # JMESPath: null, false, "", [] and {} are false; 0 is true
    path = tmp_path / "truth.yaml"
    path.write_text("source: test\nrules:\n  - when: flag\n    event_type: job.yes\n",
                    encoding="utf-8")
    truth = load_mapping(path)
    for value in (None, False, "", [], {}):
        assert truth.apply({"flag": value}, "e", "t", 0).event is None, value
    for value in (0, 0.0, True, "no", [0], {"a": None}):
        assert truth.apply({"flag": value}, "e", "t", 0).rule == "rule 1", value


def test_first_matching_rule_wins_and_rule_fields_override_shared(tmp_path):
    path = tmp_path / "order.yaml"
    path.write_text(textwrap.dedent("""\
        source: test
        fields:
          status: s
          job_id: id
        rules:
          - name: a
            when: "s == 'x'"
            event_type: job.a
            fields:
              status: {value: from_a}
          - name: b
            event_type: job.b
        """), encoding="utf-8")
    rules = load_mapping(path)
    a = rules.apply({"s": "x", "id": "1"}, EVENT_ID, "test", RECEIVED_AT)
    b = rules.apply({"s": "y", "id": "2"}, EVENT_ID, "test", RECEIVED_AT)
    assert (a.rule, a.tried, b.rule, b.tried) == ("a", ("a",), "b", ("a", "b"))
    assert_same_event(a.event, expected("test", "job.a", status="from_a", job_id="1"))
    assert_same_event(b.event, expected("test", "job.b", status="y", job_id="2"))


def test_apply_does_not_change_the_payload():
    payload = sample("ratioready", "wall_art_completed")
    before = json.dumps(payload, sort_keys=True)
    mapping("ratioready").apply(payload, EVENT_ID, "ratioready", RECEIVED_AT)
    assert json.dumps(payload, sort_keys=True) == before


# -- 5. hot reload -------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _edit(path: Path, text: str) -> None:
    """Write and move the mtime forward (file systems may keep coarse mtimes)."""
    before = path.stat().st_mtime
    path.write_text(text, encoding="utf-8")
    os.utime(path, (before + 10, before + 10))


def test_hot_reload_picks_up_edits_after_the_interval_and_keeps_the_last_good(tmp_path):
    path = tmp_path / "zupertry.yaml"
    original = (MAPPINGS / "zupertry.yaml").read_text("utf-8")
    path.write_text(original, encoding="utf-8")
    clock = FakeClock()
    mappings = Mappings({"zupertry": path}, interval=2.0, clock=clock)
    mappings.load_all()
    payload = sample("zupertry", "job_completed")

    def summary() -> str:
        return mappings.get("zupertry").apply(payload, EVENT_ID, "zupertry",
                                              RECEIVED_AT).event["summary"]

    assert summary() == "Try-on job job_abc123 completed"
    assert mappings.get("nope") is None

    old_line = '      summary: {template: "Try-on job {data.job_id} completed"}'
    assert original.splitlines()[24] == old_line  # line 25 of the file
    _edit(path, original.replace(old_line,
                                 '      summary: {template: "Done: {data.job_id}"}'))
    clock.now += 1.0            # within the interval: not looked at yet
    assert summary() == "Try-on job job_abc123 completed"
    clock.now += 1.0            # the interval has passed
    assert summary() == "Done: job_abc123"
    assert mappings.errors == {}

    # an invalid edit on line 25: the last good mapping stays, the error is recorded
    broken = original.replace(old_line, '      sumary: {template: "Broken {data.job_id}"}')
    _edit(path, broken)
    clock.now += 2.0
    assert summary() == "Done: job_abc123"
    assert list(mappings.errors) == ["zupertry"]
    assert mappings.errors["zupertry"].startswith(
        f"{path}:25: 'sumary' is not a field of the job event schema (v1) "
        "(did you mean 'summary'?)")
    clock.now += 2.0            # still broken: still the last good one, same error
    assert summary() == "Done: job_abc123"
    assert f"{path}:25:" in mappings.errors["zupertry"]

    # fixed again: reloaded, error cleared
    _edit(path, original.replace(old_line, '      summary: {template: "Fixed {data.job_id}"}'))
    clock.now += 2.0
    assert summary() == "Fixed job_abc123"
    assert mappings.errors == {}


def test_hot_reload_of_a_deleted_file_keeps_the_mapping(tmp_path):
    path = tmp_path / "upscale.yaml"
    path.write_bytes((MAPPINGS / "upscale.yaml").read_bytes())
    clock = FakeClock()
    mappings = Mappings({"upscale": path}, interval=2.0, clock=clock)
    mappings.load_all()
    first = mappings.get("upscale")
    path.unlink()
    clock.now += 5
    assert mappings.get("upscale") is first
    assert str(path) in mappings.errors["upscale"]


def test_first_get_loads_without_load_all(tmp_path):
    path = tmp_path / "listingrva.yaml"
    path.write_bytes((MAPPINGS / "listingrva.yaml").read_bytes())
    mappings = Mappings({"listingrva": path}, interval=2.0, clock=FakeClock())
    assert mappings.get("listingrva") is not None
