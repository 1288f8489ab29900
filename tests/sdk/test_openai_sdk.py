"""Drives a running videogen server with the official ``openai`` Python SDK.

The point is wire compatibility: if the SDK can create, poll, list, page,
download and delete videos, and maps our errors onto its exception classes,
then existing OpenAI Videos client code works against videogen unchanged.

Environment:
    VIDEOGEN_BASE_URL        e.g. http://127.0.0.1:8080/v1 (required; the
                             whole module is skipped without it)
    VIDEOGEN_API_KEY         a key that may create videos (required)
    VIDEOGEN_OTHER_API_KEY   a key of a different tenant (optional)
    VIDEOGEN_MODEL           model name to request (default ``videogen-ref``)
    VIDEOGEN_SDK_POLL_TIMEOUT  seconds one generation may take (default 180)

The server should run with a fast model so a 4 s video completes in seconds.

Run:
    pip install -r tests/sdk/requirements.txt
    VIDEOGEN_BASE_URL=... VIDEOGEN_API_KEY=... pytest -q tests/sdk
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
import uuid
import zlib
from typing import Iterator

import openai
import pytest

BASE_URL = os.environ.get("VIDEOGEN_BASE_URL")
API_KEY = os.environ.get("VIDEOGEN_API_KEY")
OTHER_API_KEY = os.environ.get("VIDEOGEN_OTHER_API_KEY")
MODEL = os.environ.get("VIDEOGEN_MODEL", "videogen-ref")
POLL_TIMEOUT_S = float(os.environ.get("VIDEOGEN_SDK_POLL_TIMEOUT", "180"))
REQUEST_TIMEOUT_S = 30.0
POLL_INTERVAL_MS = 200
# Upper bound on items walked while auto-paginating, so a tenant with a huge
# history cannot make a test run forever.
MAX_LISTED = 5000

if not BASE_URL or not API_KEY:
    pytest.skip(
        "set VIDEOGEN_BASE_URL and VIDEOGEN_API_KEY to run the SDK tests",
        allow_module_level=True,
    )

pytestmark = [
    # The SDK marks the Videos API deprecated (Sora shutdown); calls warn.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

UNKNOWN_ID = "video_" + "0" * 32


# ---------------------------------------------------------------- helpers


def make_client(api_key: str | None = API_KEY, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
    return openai.OpenAI(api_key=api_key, base_url=BASE_URL, **kwargs)


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Fails the test if the block runs longer than ``seconds``.

    ``create_and_poll`` loops until the job finishes, with no limit of its own.
    """

    def on_alarm(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"{what} did not finish within {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def unique_prompt(label: str) -> str:
    return f"sdk test {label}: a red ball bouncing on a wooden floor ({uuid.uuid4().hex[:8]})"


def create_and_wait(client: openai.OpenAI, label: str, **kwargs):
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("seconds", "4")
    kwargs.setdefault("size", "720x1280")
    with deadline(POLL_TIMEOUT_S, f"video {label!r}"):
        video = client.videos.create_and_poll(
            prompt=unique_prompt(label), poll_interval_ms=POLL_INTERVAL_MS, **kwargs
        )
    assert video.status == "completed", f"{label}: {video.status} error={video.error}"
    return video


def make_png(width: int, height: int) -> bytes:
    """A valid RGB8 PNG (a colour gradient), built with zlib and struct only."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type: none
        for x in range(width):
            rows += bytes(((x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), 128))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


def assert_api_error(err: openai.APIStatusError, status: int, *, code=None, param=None) -> None:
    """Checks the OpenAI error envelope as the SDK parsed it.

    The SDK unwraps ``{"error": {...}}`` into ``err.body`` and copies
    ``code``/``param``/``type`` onto the exception.
    """
    assert err.status_code == status, err
    assert isinstance(err.body, dict), f"error body is not the JSON envelope: {err.body!r}"
    assert isinstance(err.body.get("message"), str) and err.body["message"], err.body
    assert isinstance(err.type, str) and err.type, err.body
    if code is not None:
        assert err.code == code, err.body
    if param is not None:
        assert err.param == param, err.body


# --------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def client() -> openai.OpenAI:
    return make_client()


@pytest.fixture(scope="module")
def completed_video(client):
    """One finished video shared by the read-only tests."""
    return create_and_wait(client, "shared")


# ------------------------------------------------------------------ tests


def test_create_and_poll_completes(completed_video):
    v = completed_video
    assert v.id.startswith("video_")
    assert v.object == "video"
    assert v.status == "completed"
    assert v.progress == 100
    assert v.model == MODEL
    assert v.seconds == "4"
    assert v.size == "720x1280"
    assert v.error is None
    assert isinstance(v.created_at, int) and v.created_at > 0
    assert isinstance(v.completed_at, int) and v.completed_at >= v.created_at


def test_retrieve(client, completed_video):
    v = client.videos.retrieve(completed_video.id)
    assert v.id == completed_video.id
    assert v.status == "completed"
    assert v.progress == 100
    assert v.prompt == completed_video.prompt


def test_create_returns_a_queued_or_running_video(client):
    v = client.videos.create(model=MODEL, prompt=unique_prompt("create"), seconds="4", size="1280x720")
    assert v.id.startswith("video_")
    assert v.object == "video"
    assert v.status in ("queued", "in_progress", "completed")
    assert 0 <= v.progress <= 100
    assert v.size == "1280x720"


def test_list_pagination_and_order(client):
    created = []
    for i in range(3):
        v = client.videos.create(model=MODEL, prompt=unique_prompt(f"list {i}"), seconds="4", size="720x1280")
        created.append(v.id)
        time.sleep(0.01)  # distinct creation instants, so the order is defined

    # One page by hand.
    page = client.videos.list(limit=2)
    assert len(page.data) == 2
    assert page.has_more is True
    assert page.last_id == page.data[-1].id
    assert all(v.object == "video" for v in page.data)
    nxt = page.get_next_page()
    assert nxt.data, "the second page is empty"
    assert not {v.id for v in nxt.data} & {v.id for v in page.data}

    # Auto-pagination, both orders: every created id exactly once, in order.
    for order in ("desc", "asc", None):
        kwargs = {"limit": 2}
        if order is not None:
            kwargs["order"] = order
        seen: list[str] = []
        for v in client.videos.list(**kwargs):
            seen.append(v.id)
            assert len(seen) <= MAX_LISTED, "listing did not end"
            if order != "desc" and all(c in seen for c in created):
                break  # the rest of the history is not needed here
        if order == "desc":
            # The full walk ended: the last page said has_more=false.
            assert set(created) <= set(seen)
        assert len(seen) == len(set(seen)), f"order={order}: an id was listed twice"
        positions = [seen.index(c) for c in created]
        if order == "asc":
            assert positions == sorted(positions), f"asc order wrong: {positions}"
        else:
            # desc is the default: newest first.
            assert positions == sorted(positions, reverse=True), f"desc order wrong: {positions}"


def test_download_video_and_previews(client, completed_video):
    video = client.videos.download_content(completed_video.id)
    data = video.content
    assert len(data) > 8
    assert data[4:8] == b"ftyp", f"not an MP4: {data[:16]!r}"
    assert video.response.headers["content-type"].startswith("video/mp4")

    explicit = client.videos.download_content(completed_video.id, variant="video")
    assert explicit.content == data

    for variant in ("thumbnail", "spritesheet"):
        img = client.videos.download_content(completed_video.id, variant=variant)
        assert img.content[:3] == b"\xff\xd8\xff", f"{variant} is not a JPEG: {img.content[:8]!r}"
        assert img.response.headers["content-type"].startswith("image/jpeg")


def test_delete_then_not_found(client):
    v = create_and_wait(client, "delete")
    deleted = client.videos.delete(v.id)
    assert deleted.id == v.id
    assert deleted.deleted is True
    assert deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError) as e:
        client.videos.retrieve(v.id)
    assert_api_error(e.value, 404)
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(v.id)
    assert v.id not in {x.id for x in client.videos.list(limit=100).data}


def test_create_with_input_reference_png(client):
    png = make_png(64, 64)
    v = create_and_wait(client, "input reference", input_reference=("reference.png", png, "image/png"))
    assert v.progress == 100


def test_bad_size_is_bad_request(client):
    # A size the model does not make, and one no model could.
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(model=MODEL, prompt=unique_prompt("bad size"), size="640x480")  # type: ignore[arg-type]
    assert_api_error(e.value, 400, code="unsupported_by_model", param="size")
    assert e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(model=MODEL, prompt=unique_prompt("bad size"), size="641x480")  # type: ignore[arg-type]
    assert_api_error(e.value, 400, code="invalid_value", param="size")


def test_models_list_and_retrieve(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert_api_error(e.value, 404, code="model_not_found", param="model")


def test_empty_prompt_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(model=MODEL, prompt="")
    assert_api_error(e.value, 400, param="prompt")
    assert e.value.code in ("invalid_value", "missing_required_parameter"), e.value.body


def test_denylisted_prompt_is_rejected(client):
    # `forbidden-test-term` is videogen-safety's built-in harmless test phrase.
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(model=MODEL, prompt="a video of the F0RBIDDEN test-term")
    assert_api_error(e.value, 400, code="content_policy_violation", param="prompt")
    assert "f0rbidden" not in e.value.message.lower()


def test_sdk_default_model_is_rejected(client):
    # Without `model` the SDK sends nothing, and the server picks its default;
    # asking for OpenAI's model by name must fail clearly.
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(model="sora-2", prompt=unique_prompt("sora"))
    assert_api_error(e.value, 400, code="invalid_value", param="model")


def test_bad_api_key_is_authentication_error():
    bad = make_client(api_key="sk-videogen-not-a-real-key-" + uuid.uuid4().hex)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.videos.list(limit=1)
    assert_api_error(e.value, 401, code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        bad.videos.retrieve(UNKNOWN_ID)


def test_unknown_id_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.videos.retrieve(UNKNOWN_ID)
    assert_api_error(e.value, 404, code="video_not_found", param="video_id")
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(UNKNOWN_ID)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(UNKNOWN_ID)


@pytest.mark.skipif(not OTHER_API_KEY, reason="VIDEOGEN_OTHER_API_KEY not set")
def test_other_tenants_video_is_not_found(client, completed_video):
    other = make_client(api_key=OTHER_API_KEY)
    with pytest.raises(openai.NotFoundError) as e:
        other.videos.retrieve(completed_video.id)
    # Indistinguishable from an id that never existed.
    assert_api_error(e.value, 404, code="video_not_found", param="video_id")
    with pytest.raises(openai.NotFoundError):
        other.videos.download_content(completed_video.id)
    with pytest.raises(openai.NotFoundError):
        other.videos.delete(completed_video.id)
    assert completed_video.id not in {v.id for v in other.videos.list(limit=100).data}
    # Still there for its owner.
    assert client.videos.retrieve(completed_video.id).status == "completed"
