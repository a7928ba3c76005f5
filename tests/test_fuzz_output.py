"""Whatever a malicious friend signs and whatever a ledger writer plants, reading, rendering and the JSON
output never raise, in any time zone, and nothing that reaches the terminal carries a control character.

The friend is real (their records verify): any text, any message type and type extension the format
allows, and any sending time the format allows (2000 to 2100), read back by a reader whose time zone is
drawn too. Beside it, a ledger writer puts arbitrary values at the friend's next page and next epoch.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reschat.cli import message_json, problem_json
from reschat.errors import ReschatError
from reschat.render import format_conversation, neutralize
from tests.conftest import befriend, ledger_rig, make_person

ZONES = ["UTC", "Asia/Tokyo", "Europe/Berlin", "America/New_York", "America/St_Johns", "Pacific/Kiritimati",
         "Pacific/Pago_Pago"]

_EXAMPLE = [0]

#: Printable ASCII, as every ledger value is; sometimes shaped like a protocol-2 page.
ledger_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=300),
    st.binary(min_size=1, max_size=2000).map(lambda raw: "reschat2:" + base64.b64encode(raw).decode()),
).filter(lambda value: not value.startswith("-"))

friend_texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.sampled_from("\x1b[]0;\x07\r\n\t\u202e\u200b\x00\x7f\x9b abc"), max_size=120),
)


@contextmanager
def time_zone(name: str) -> Iterator[None]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


class FixedClock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    zone=st.sampled_from(ZONES),
    sent_at=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                         timezones=st.just(timezone.utc)),
    records=st.lists(st.tuples(st.sampled_from(["text", "file", "setting"]), friend_texts,
                               st.text(max_size=20)), min_size=1, max_size=4),
    planted=st.lists(ledger_values, max_size=3),
)
def test_no_signed_or_planted_value_breaks_reading_rendering_or_json(
    tmp_path_factory: pytest.TempPathFactory, zone: str, sent_at: datetime,
    records: list[tuple[str, str, str]], planted: list[str],
) -> None:
    _EXAMPLE[0] += 1
    root: Path = tmp_path_factory.mktemp(f"fuzz{_EXAMPLE[0]}")
    with ledger_rig("memory", root) as rig, time_zone(zone):
        mallory = make_person("mallory", 0, root / "mallory", rig.ledger, clock=FixedClock(sent_at))
        bob = make_person("bob", 1, root / "bob", rig.ledger)
        befriend(mallory, bob)
        for msg_type, text, type_ext in records:
            # The sender's own checks refuse some of these; the rest are signed and written.
            with suppress(ReschatError):
                mallory.chat.send_message(text or "x", "bob", msg_type=msg_type, type_ext=type_ext)
        places = [(1, 2), (1, 3), (2, 1)]
        for value, (epoch, number) in zip(planted, places, strict=False):
            rig.plant(bob.chat.lane_address("mallory", mine=False, number=number, epoch=epoch), value)

        views = [bob.chat.get_update("mallory"), bob.chat.load_all("mallory")]
        for view in views:
            rows = format_conversation(view.messages, view.problems, width=80)
            rows += format_conversation(view.messages, view.problems, width=80, full=True)
            assert not [row for row in rows if has_control(row)]
            document = json.dumps([message_json(m) for m in view.messages]
                                  + [problem_json(p) for p in view.problems])
            assert isinstance(json.loads(document), list)
            for message in view.messages:
                assert datetime(2000, 1, 1, tzinfo=timezone.utc) <= message.time < datetime(
                    2100, 1, 1, tzinfo=timezone.utc)
                assert not has_control(neutralize(message.text))
