"""Hostile device input for the payload decoder, and what every decoded result must be.

Shared by the CI-sized property tests (tests/unit/mqtt/test_fuzz_decoders.py) and the
long run (`python -m bench.fuzz`), so both fuzz the same thing.

Inputs, on every topic kind (telemetry, status, delivery, OwnTracks):
- arbitrary bytes;
- arbitrary JSON values (NaN and Infinity tokens, huge integers, any unicode);
- near-valid payloads: a good fix, delivery report, OwnTracks location or status, then
  mutated: a field of the wrong type, a huge number, NaN, a missing field, extra fields,
  deep nesting, huge arrays, NUL bytes, broken UTF-8, truncation;
- hostile topics: device ids with wildcards, '/', '..', NUL, lookalike letters, 5,000
  characters, a device's payload on another's topic shape.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from ingest.validation import FixRules
from mqtt.codec import MAX_DETAIL_CHARS, Codec, Ignored, StatusReport
from mqtt.rejects import Reason, Rejected
from mqtt.topics import TopicScheme
from tracker.handoff import DeliveryReport
from tracker.positions import DEVICE_ID_PATTERN, Fix, is_valid_device_id

# 2026-11-27T09:00:00Z; valid fixes are up to six days older (the maximum age is seven).
RECEIVED_AT = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
RECEIVED_MS = 1_795_770_000_000
MAX_AGE = timedelta(days=7)
SIX_DAYS_MS = 6 * 86_400_000
# Bounds that keep one case to well under a millisecond of decoding on average.
MAX_ARRAY = 3000
MAX_DEPTH = 5000
MAX_BYTES = 2048

KINDS = ("telemetry", "status", "delivery", "owntracks")
_IGNORED = re.compile(r"[a-z_]{1,64}")
_OUTCOMES = {"delivered", "failed"}


def codec() -> Codec:
    """The production topic scheme and rules, with the default maximum fix age."""
    return Codec(TopicScheme(), FixRules(MAX_AGE))


@dataclass(frozen=True)
class Case:
    family: str  # which generator made it, for the tally
    topic: str
    payload: bytes


class Violation(AssertionError):
    """A decoded item that breaks the decoder's contract."""


# --- topics -------------------------------------------------------------------------------

HOSTILE_IDS = (
    "+",
    "#",
    "van-1/+",
    "van-1/#",
    "a/b",
    "..",
    "../van-2",
    "van-1/../van-2",
    "van\x00-1",
    "\x00",
    "",
    " ",
    "van 1",
    "van-1\n",
    "$SYS",
    "x" * 65,
    "x" * 5000,
    "v\u0430n-1",  # Cyrillic a
    "van-1\u200b",  # zero-width space
    "van\u20111",  # non-breaking hyphen
    "\u202evan-1",  # right-to-left override
    "\uff56\uff41\uff4e-1",  # fullwidth letters
    "'; DROP TABLE telemetry; --",
    "van-1' OR '1'='1",
    "$$",
    "\\",
    "%s",
    "{device}",
)
valid_ids = st.from_regex(DEVICE_ID_PATTERN, fullmatch=True)
device_ids = st.one_of(valid_ids, st.sampled_from(HOSTILE_IDS), st.text(max_size=80))


@st.composite
def device_ids_mostly_valid(draw: st.DrawFn) -> str:
    """Nine in ten valid, so that most cases get past the topic to the payload decoder."""
    return draw(valid_ids if draw(st.integers(0, 9)) else device_ids)


@st.composite
def topics(draw: st.DrawFn, kind: str) -> str:
    if kind == "owntracks":
        user = draw(device_ids_mostly_valid())
        device = draw(device_ids_mostly_valid())
        extra = draw(st.sampled_from(["", "", "", "/event", "/info", "/cmd", "/a/b/c"]))
        return f"owntracks/{user}/{device}{extra}"
    return f"fleet/{draw(device_ids_mostly_valid())}/{kind}"


# Topics that match no route, or a route with a twist: prefixes, levels, case, wildcards.
odd_topics = st.one_of(
    st.sampled_from(
        [
            "",
            "/",
            "fleet",
            "fleet/",
            "fleet//telemetry",
            "fleet/van-1",
            "fleet/van-1/telemetry/extra",
            "fleet/van-1/TELEMETRY",
            "Fleet/van-1/telemetry",
            "/fleet/van-1/telemetry",
            "fleet/+/telemetry",
            "fleet/#",
            "$share/ingest/fleet/van-1/telemetry",
            "owntracks",
            "owntracks/",
            "owntracks/alice",
            "owntracks//phone",
            "owntracks/a:b/c",
            "owntracks/a/b:c",
            "fleet/van-1/status\x00",
        ]
    ),
    st.text(max_size=120),
)
any_topic = st.one_of(*(topics(k) for k in KINDS), odd_topics)

# --- JSON values --------------------------------------------------------------------------

EXTREME_NUMBERS: tuple[Any, ...] = (
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
    5e-324,
    -0.0,
    0,
    -1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**100,
    -(10**400),
    RECEIVED_MS,
    RECEIVED_MS // 1000,
    RECEIVED_MS * 1000,
)
# A string that `encode` turns into bytes that are not UTF-8: a lone 0xff, a surrogate as
# CESU-8 and a cut-off two-byte sequence.
BROKEN_UTF8_MARK = "~broken-utf8~"
BROKEN_UTF8 = b"\xff\xed\xa0\x80\xc3"
HOSTILE_STRINGS = (
    BROKEN_UTF8_MARK,
    "",
    "\x00",
    "a\x00b",
    "'; DROP TABLE telemetry; --",
    '"; DELETE FROM quarantine; --',
    "$$; SELECT pg_sleep(10); $$",
    "\\",
    "\\x00",
    "%s%s%n",
    "\u202e",
    "\ufeff",
    "\U0001d4ff\U0001d4ea\U0001d4f7",  # script letters
    "NaN",
    "Infinity",
    "null",
    "2026-11-27T09:00:00",  # no offset
    "2026-11-27T09:00:00Z",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "x" * 10_000,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EXTREME_NUMBERS),
    st.text(max_size=40),
    st.sampled_from(HOSTILE_STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)


def encode(value: Any, ascii_only: bool = True) -> bytes:
    """JSON as Python writes it: NaN and Infinity come out as bare tokens, which is what
    a careless device sends; the broken-UTF-8 mark becomes bytes that are not UTF-8."""
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass").replace(BROKEN_UTF8_MARK.encode(), BROKEN_UTF8)


# --- near-valid payloads ------------------------------------------------------------------

fix_times = st.one_of(
    st.integers(RECEIVED_MS - SIX_DAYS_MS, RECEIVED_MS),
    st.integers(RECEIVED_MS - SIX_DAYS_MS, RECEIVED_MS).map(
        lambda ms: datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()
    ),
)
good_fixes = st.fixed_dictionaries(
    {
        "ts": fix_times,
        "lat": st.floats(-90, 90),
        "lon": st.floats(-180, 180),
    },
    optional={
        "alt": st.floats(-20_000, 100_000),
        "rel_alt": st.floats(-20_000, 100_000),
        "speed": st.floats(0, 1000),
        "heading": st.floats(0, 360),
        "acc": st.floats(0, 1_000_000),
        "battery": st.floats(0, 100),
        "kind": st.sampled_from(["vehicle", "drone", "phone"]),
        "seq": st.integers(0, 2**63 - 1),
    },
)
good_reports = st.fixed_dictionaries(
    {
        "delivery_id": valid_ids,
        "outcome": st.sampled_from(sorted(_OUTCOMES)),
        "ts": fix_times,
    },
    optional={"detail": st.text(max_size=600)},
)
good_owntracks = st.fixed_dictionaries(
    {
        "_type": st.just("location"),
        "lat": st.floats(-90, 90),
        "lon": st.floats(-180, 180),
        "tst": st.integers((RECEIVED_MS - SIX_DAYS_MS) // 1000, RECEIVED_MS // 1000),
    },
    optional={
        "vel": st.floats(0, 3600),
        "cog": st.floats(0, 360),
        "alt": st.floats(-1000, 9000),
        "acc": st.floats(0, 10_000),
        "batt": st.floats(0, 100),
        "tid": st.text(max_size=4),
    },
)
owntracks_other = st.fixed_dictionaries(
    {"_type": st.one_of(st.sampled_from(["lwt", "transition", "waypoint", "card"]), st.text())},
    optional={"tst": st.integers()},
)
hostile_values = st.one_of(st.sampled_from(EXTREME_NUMBERS + HOSTILE_STRINGS), json_values)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A good object with one to three mutations."""
    value: Any = dict(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(
            st.sampled_from(
                ["replace", "delete", "add", "nest_field", "wrap_list", "break_text", "keep"]
            )
        )
        if not isinstance(value, dict):
            break
        keys = sorted(value)
        if how == "replace" and keys:
            value[draw(st.sampled_from(keys))] = draw(hostile_values)
        elif how == "delete" and keys:
            del value[draw(st.sampled_from(keys))]
        elif how == "add":
            value[draw(st.text(max_size=20))] = draw(hostile_values)
        elif how == "nest_field" and keys:
            key = draw(st.sampled_from(keys))
            value[key] = nested(value[key], draw(st.integers(1, 50)), draw(st.booleans()))
        elif how == "break_text" and any(isinstance(value[k], str) for k in keys):
            key = draw(st.sampled_from([k for k in keys if isinstance(value[k], str)]))
            text = value[key]
            at = draw(st.integers(0, len(text)))
            value[key] = text[:at] + BROKEN_UTF8_MARK + text[at:]
        elif how == "wrap_list":
            value = [value]
    return value


def nested(value: Any, depth: int, as_objects: bool) -> Any:
    for _ in range(depth):
        value = {"a": value} if as_objects else [value]
    return value


def deep_bytes(inner: bytes, depth: int, as_objects: bool) -> bytes:
    """Nesting far beyond what `json` or a recursive decoder would take, as bytes."""
    if as_objects:
        return b'{"a":' * depth + inner + b"}" * depth
    return b"[" * depth + inner + b"]" * depth


@st.composite
def byte_mutation(draw: st.DrawFn, payload: bytes) -> bytes:
    how = draw(st.sampled_from(["truncate", "insert", "flip", "bom", "append", "nul"]))
    at = draw(st.integers(0, len(payload)))
    if how == "truncate":
        return payload[:at]
    if how == "insert":
        return payload[:at] + draw(st.binary(min_size=1, max_size=4)) + payload[at:]
    if how == "flip" and payload:
        i = min(at, len(payload) - 1)
        return payload[:i] + bytes([payload[i] ^ (1 << draw(st.integers(0, 7)))]) + payload[i + 1 :]
    if how == "bom":
        return b"\xef\xbb\xbf" + payload
    if how == "append":
        return payload + draw(st.sampled_from([b"\x00", b",", b"}", b"]", b"\xff", b" garbage"]))
    return payload[:at] + b"\x00" + payload[at:]


# --- cases --------------------------------------------------------------------------------


@st.composite
def arbitrary_bytes(draw: st.DrawFn) -> Case:
    return Case("bytes", draw(any_topic), draw(st.binary(max_size=MAX_BYTES)))


@st.composite
def arbitrary_json(draw: st.DrawFn) -> Case:
    payload = encode(draw(json_values), draw(st.booleans()))
    return Case("json", draw(any_topic), payload)


@st.composite
def near_valid(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(KINDS))
    topic = draw(topics(kind))
    value: Any
    if kind == "telemetry":
        value = draw(mutated(good_fixes))
    elif kind == "delivery":
        value = draw(mutated(good_reports))
    elif kind == "owntracks":
        value = draw(st.one_of(mutated(good_owntracks), owntracks_other))
    else:
        text = draw(
            st.sampled_from(["online", "offline", '"online"', "OFFLINE", " online ", "", "on"])
        )
        raw = text.encode()
        return Case("near_valid", topic, draw(byte_mutation(raw)) if draw(st.booleans()) else raw)
    payload = encode(value, draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:
        payload = draw(byte_mutation(payload))
    return Case("near_valid", topic, payload)


@st.composite
def batches(draw: st.DrawFn) -> Case:
    """Offline buffers: good and mutated fixes mixed, or one good fix many times over."""
    topic = draw(topics("telemetry"))
    if draw(st.booleans()):
        elements = draw(st.lists(st.one_of(good_fixes, mutated(good_fixes)), max_size=40))
        return Case("batch", topic, encode(elements))
    one = encode(draw(good_fixes))
    count = draw(st.integers(1, MAX_ARRAY))
    return Case("batch", topic, b"[" + b",".join([one] * count) + b"]")


@st.composite
def deep(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(KINDS))
    inner = draw(st.sampled_from([b"1", b'"x"', b"{}", b"[]", b"null", encode({"ts": 1})]))
    depth = draw(st.integers(1, MAX_DEPTH))
    as_objects = draw(st.booleans())
    payload = deep_bytes(inner, depth, as_objects)
    if draw(st.booleans()):
        # Inside a field the decoder skips, after a good fix's fields.
        fix = encode({"ts": RECEIVED_MS, "lat": 1.0, "lon": 2.0})
        payload = fix[:-1] + b',"junk":' + payload + b"}"
    return Case("deep", draw(topics(kind)), payload)


@st.composite
def injected_topic(draw: st.DrawFn) -> Case:
    """A good payload on a hostile topic: the topic, not the payload, names the device."""
    kind = draw(st.sampled_from(KINDS))
    good = {
        "telemetry": good_fixes,
        "delivery": good_reports,
        "owntracks": good_owntracks,
        "status": st.just("online"),
    }[kind]
    device = draw(st.sampled_from(HOSTILE_IDS))
    topic = f"owntracks/{device}/phone" if kind == "owntracks" else f"fleet/{device}/{kind}"
    return Case("topic", topic, encode(draw(good)))


cases = st.one_of(
    arbitrary_bytes(), arbitrary_json(), near_valid(), batches(), deep(), injected_topic()
)
FAMILIES = {
    "bytes": arbitrary_bytes(),
    "json": arbitrary_json(),
    "near_valid": near_valid(),
    "batch": batches(),
    "deep": deep(),
    "topic": injected_topic(),
}

# --- the contract -------------------------------------------------------------------------


def check(decoder: Codec, case: Case) -> list[str]:
    """Decode the case and check every item; returns a label per item for the tally.

    Raises whatever the decoder raises, or `Violation` for an item that breaks the
    contract: every item is a Fix, StatusReport, DeliveryReport, Ignored, or a Rejected
    with a Reason, and what will be stored is storable (no NUL in PostgreSQL text, valid
    ids, finite in-range numbers)."""
    items = decoder.decode(case.topic, case.payload, RECEIVED_AT)
    if not isinstance(items, list) or not items:
        raise Violation(f"decode returned {items!r}, not a non-empty list")
    rules = FixRules(MAX_AGE)
    nul_free_topic = "\x00" not in case.topic
    labels = []
    for item in items:
        if isinstance(item, Rejected):
            _check_rejected(item, case, nul_free_topic)
            labels.append(item.reason.value)
        elif isinstance(item, Fix):
            _expect(is_valid_device_id(item.device_id), f"fix of device {item.device_id!r}")
            problem = rules(item)
            _expect(problem is None, f"a fix that breaks the rules was accepted: {problem}")
            _expect(item.ts.tzinfo is not None, "a fix time without a zone")
            _expect(item.received_at == RECEIVED_AT, "a fix with another arrival time")
            labels.append("fix")
        elif isinstance(item, StatusReport):
            _expect(item.status in ("online", "offline"), f"status {item.status!r}")
            _expect(is_valid_device_id(item.device_id), f"status of {item.device_id!r}")
            labels.append("status")
        elif isinstance(item, DeliveryReport):
            _expect(is_valid_device_id(item.device_id), f"report of {item.device_id!r}")
            _expect(is_valid_device_id(item.delivery_id), f"delivery {item.delivery_id!r}")
            _expect(item.outcome in _OUTCOMES, f"outcome {item.outcome!r}")
            _expect("\x00" not in item.detail, "a NUL in a report's detail")
            _expect(len(item.detail) <= MAX_DETAIL_CHARS, "a report's detail over its limit")
            _storable_text(item.detail, "a report's detail")
            _expect(item.ts.tzinfo is not None, "a report time without a zone")
            labels.append("delivery_report")
        elif isinstance(item, Ignored):
            _expect(_IGNORED.fullmatch(item.what) is not None, f"ignored as {item.what!r}")
            labels.append("ignored")
        else:
            raise Violation(f"decode returned a {type(item).__name__}: {item!r}")
    return labels


def _check_rejected(item: Rejected, case: Case, nul_free_topic: bool) -> None:
    _expect(isinstance(item.reason, Reason), f"reason {item.reason!r}")
    _expect(isinstance(item.detail, str) and bool(item.detail), "a reject without a detail")
    _expect(item.topic == case.topic, "a reject names another topic")
    _expect(isinstance(item.raw, bytes), "a reject's bytes are not bytes")
    _expect(item.size == len(item.raw), "a reject's size is not its bytes'")
    _expect(item.received_at == RECEIVED_AT, "a reject with another arrival time")
    _expect(item.raw in case.payload, "a reject keeps bytes the message did not carry")
    if nul_free_topic:
        # What the quarantine stores as text must be storable as PostgreSQL text. (MQTT
        # forbids NUL in topic names; the broker refuses such a PUBLISH.)
        for name in ("detail", "device_id"):
            value = getattr(item, name)
            if value is not None:
                _expect("\x00" not in value, f"a NUL in a reject's {name}")
                _storable_text(value, f"a reject's {name}")


def _storable_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Violation(f"{what} is not encodable as UTF-8: {text!r}") from None


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise Violation(what)


@dataclass
class Tally:
    """What a run decoded: cases, items by label, crashes with a sample of each kind."""

    cases: int = 0
    crashes: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    crash_samples: dict[str, Case] = field(default_factory=dict)

    def run(self, decoder: Codec, case: Case) -> None:
        self.cases += 1
        self.families[case.family] += 1
        try:
            self.labels.update(check(decoder, case))
        except Exception as exc:  # a crash is what the run counts
            self.crashes += 1
            # Grouped by what went wrong, not where: positions and sizes vary per case.
            kind = f"{type(exc).__name__}: {re.sub(r'[0-9]+', 'N', str(exc))[:120]}"
            self.crash_samples.setdefault(kind, case)
