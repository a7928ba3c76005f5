"""Order a group member cannot game: the causal mark across members and the order inside a lane.

A group record's causal pair names one record its writer had read (``group.encode_mark``): each reader
that read that record too reports the new one ``backdated`` when it is dated before it, and shows it after
it. A member whose clock is set back is the case that needs no modified client: it is the one written
first. Each test that asserts the absence of a report ends with the same kind of member caught, so that
none of them passes with the check taken out.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from reschat.chat import ConversationView
from reschat.group import MAX_LANE_TIMES, MAX_MARK_EPOCHS
from reschat.groupstate import GroupState, encode_mark
from reschat.lane import Problem
from reschat.ledger import MemoryLedger
from reschat.page import MAX_SEQ
from tests.conftest import befriend
from tests.test_group_attacks import edit
from tests.test_groups import Member, join, member, team, texts, until

BEHIND = timedelta(minutes=5)  # within chat.CLOCK_AHEAD: a reader takes the other members' dates as possible


def behind(by: timedelta) -> Callable[[], datetime]:
    """A member's clock set back by ``by`` (the real time otherwise, so that the others' dates are sane)."""
    return lambda: datetime.now(timezone.utc) - by


def backdated(view: ConversationView) -> list[Problem]:
    return [p for p in view.problems if p.kind == "backdated"]


def sent(who: Member, text: str) -> None:
    assert who.groups.send_message(text, "team").error is None


def shows(text: str) -> Callable[[ConversationView], bool]:
    return lambda view: text in texts(view)


def time_of(view: ConversationView, text: str) -> datetime:
    (message,) = [m for m in view.messages if m.text == text]
    return message.time


def test_a_member_whose_clock_is_behind_is_reported_backdated_and_its_reply_shown_after_what_it_read(
    tmp_path: Path,
) -> None:
    alice, bob, carol = team(tmp_path, MemoryLedger())
    bob.person.chat.clock = behind(BEHIND)
    sent(alice, "shall we ship?")
    until(bob, "team", shows("shall we ship?"))
    sent(bob, "yes, ship it")
    # carol is no friend of bob's: the report names him by his card's label and alice by her nickname.
    for reader, whose in ((carol, "alice's"), (alice, "your")):
        view = until(reader, "team", shows("yes, ship it"))
        assert texts(view) == ["shall we ship?", "yes, ship it"]
        (problem,) = backdated(view)
        assert problem.lane.startswith("bob")
        assert f"was written after {whose} message #" in problem.detail and "dated before it" in problem.detail
        assert time_of(view, "yes, ship it") > time_of(view, "shall we ship?")
    # What bob's record says of itself is unchanged: its date is still the one his clock gave it.
    (reply,) = [m for m in bob.groups.get_update("team").messages if m.text == "yes, ship it"]
    assert reply.time < time_of(view, "shall we ship?")


def test_concurrent_messages_written_before_reading_each_other_are_not_flagged(tmp_path: Path) -> None:
    alice, bob, carol = team(tmp_path, MemoryLedger())
    bob.person.chat.clock = behind(BEHIND)
    sent(alice, "from alice")
    sent(bob, "from bob, who had not read alice")  # no update in between: his mark cannot name her message
    for reader in (carol, alice):
        view = until(reader, "team", lambda v: len(texts(v)) == 2)
        # Each by its own date (bob's clock puts his first): nothing claims to have seen the other.
        assert texts(view) == ["from bob, who had not read alice", "from alice"]
        assert backdated(view) == []
    # The same clock, once bob has read alice's message, is caught.
    until(bob, "team", shows("from alice"))
    sent(bob, "from bob, having read alice")
    view = until(carol, "team", shows("from bob, having read alice"))
    assert texts(view)[-2:] == ["from alice", "from bob, having read alice"]
    assert len(backdated(view)) == 1


def test_honest_replies_across_members_are_never_flagged(tmp_path: Path) -> None:
    alice, bob, carol = team(tmp_path, MemoryLedger())
    order = []
    for i in range(3):
        for who in (alice, bob, carol):
            who.groups.get_update("team")
            sent(who, f"{who.name} {i}")
            order.append(f"{who.name} {i}")
    for reader in (alice, bob, carol):
        view = until(reader, "team", lambda v: len(texts(v)) == len(order))
        assert texts(view) == order
        assert view.problems == []
    # carol's clock set back now keeps her next message only just after her own last one: before alice's.
    sent(alice, "alice, last")
    until(carol, "team", shows("alice, last"))
    carol.person.chat.clock = behind(BEHIND)
    sent(carol, "carol, late")
    view = until(alice, "team", shows("carol, late"))
    assert texts(view)[-2:] == ["alice, last", "carol, late"]
    assert [p.lane for p in backdated(view)] == ["carol"]


def test_a_member_who_joined_later_does_not_check_a_mark_naming_an_epoch_it_cannot_read(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    dave = member("dave", 3, tmp_path, ledger)
    befriend(alice.person, dave.person)
    bob.person.chat.clock = behind(BEHIND)
    sent(alice, "before dave")
    until(bob, "team", shows("before dave"))
    alice.groups.add("team", "dave")
    join(dave)
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    # Written in epoch 2, naming alice's message of epoch 1, the newest bob read.
    sent(bob, "in epoch 2")
    view = until(dave, "team", shows("in epoch 2"))
    assert "before dave" not in texts(view)
    assert backdated(view) == []
    # carol read epoch 1: she checks the mark across the epochs.
    view = until(carol, "team", lambda v: "in epoch 2" in texts(v) and carol.state("team").epoch == 2)
    assert texts(view)[-2:] == ["before dave", "in epoch 2"]
    assert len(backdated(view)) == 1


def test_junk_causal_marks_neither_crash_nor_flag_honest_members(tmp_path: Path) -> None:
    """bob's modified client writes marks of its choosing (the engine's own writing code, its mark
    replaced): none names a record its readers read of another member, so none is reported, and nobody's
    message moves. The last, an honest mark, is reported: the same clock is behind throughout."""
    alice, bob, carol = team(tmp_path, MemoryLedger())
    sent(alice, "alice speaks")
    until(bob, "team", shows("alice speaks"))
    state: GroupState = bob.state("team")
    members = sorted(state.current().fingerprints())
    alice_seq = state.lane(1, alice.fingerprint).seq
    real = encode_mark(0, members.index(alice.fingerprint), alice.fingerprint, alice_seq)
    junk = {
        "beyond the membership": ((63 << 6) | 63, 1),
        "a membership told differently": (real[0] ^ (1 << 6), alice_seq),
        "a huge sequence number": (real[0], MAX_SEQ - 1),
        "an epoch before the first": (2**31 - 1, alice_seq),
        # His own lane, the record written last below: checked there, in its lane, and never across lanes.
        "his own lane": encode_mark(0, members.index(bob.fingerprint), bob.fingerprint, 9),
        "what carol never wrote": encode_mark(0, members.index(carol.fingerprint), carol.fingerprint, 5),
        "nobody": (0, 7),
        "an older client's mark, (epoch, 0)": (1, 0),
    }
    bob.person.chat.clock = behind(BEHIND)  # any mark that named alice's message would be reported
    for text, mark in junk.items():
        bob.groups._causal_mark = lambda _state, _epoch, mark=mark: mark  # type: ignore[method-assign]
        sent(bob, text)
    # Each message as its writer dated it (a writer's own view shows its own records at their dates).
    dated = {m.text: m.time for who in (alice, bob) for m in who.groups.get_update("team").messages
             if m.outgoing and m.type == "text"}
    for reader in (carol, alice):
        view = until(reader, "team", lambda v: len(texts(v)) == len(junk) + 1)
        assert texts(view) == [*junk, "alice speaks"]  # by their dates: bob's clock puts his first
        assert backdated(view) == []
        assert [p for p in view.problems if p.kind != "restart"] == []
        assert {m.text: m.time for m in view.messages if m.type == "text"} == dated  # nobody's message moved
    del bob.groups._causal_mark  # the engine's own mark again
    sent(bob, "an honest mark")
    assert bob.state("team").own(1).seq == len(junk) + 1  # the record "his own lane" named
    view = until(carol, "team", shows("an honest mark"))
    assert texts(view)[-2:] == ["alice speaks", "an honest mark"]
    assert len(backdated(view)) == 1


def test_a_record_dated_before_the_previous_one_of_its_lane_is_flagged_and_kept_in_written_order(
    tmp_path: Path,
) -> None:
    """A client keeps its own lane's dates in order; bob's modified one forgets its last date."""
    alice, bob, carol = team(tmp_path, MemoryLedger())
    sent(bob, "first")
    edit(bob, "team", lambda state: state.mine["1"].update(last_time=""))
    bob.person.chat.clock = behind(timedelta(hours=1))
    sent(bob, "second, dated an hour before the first")
    for reader in (carol, alice):
        view = until(reader, "team", lambda v: len(texts(v)) == 2)
        assert texts(view) == ["first", "second, dated an hour before the first"]
        (problem,) = backdated(view)
        assert problem.lane.startswith("bob") and "dated before the message written before it" in problem.detail


def test_a_message_dated_far_ahead_is_not_named_so_honest_replies_to_it_are_not_flagged(tmp_path: Path) -> None:
    """alice's clock is an hour ahead (or she lies): bob's honest reply is dated before her message, and a
    mark naming it would get bob reported and moved under it; past CLOCK_AHEAD, a date is not named."""
    alice, bob, carol = team(tmp_path, MemoryLedger())
    alice.person.chat.clock = behind(-timedelta(hours=1))
    sent(alice, "from an hour ahead")
    until(bob, "team", shows("from an hour ahead"))
    sent(bob, "an honest reply")
    view = until(carol, "team", shows("an honest reply"))
    assert texts(view) == ["an honest reply", "from an hour ahead"]  # by their dates
    assert backdated(view) == []
    # carol's clock set back, writing after she read bob's reply (dated by a sane clock), is caught.
    carol.person.chat.clock = behind(BEHIND)
    sent(carol, "carol, late")
    view = until(alice, "team", shows("carol, late"))
    assert texts(view) == ["an honest reply", "carol, late", "from an hour ahead"]
    assert [p.lane for p in backdated(view)] == ["carol"]


def test_a_mark_naming_a_removed_members_message_is_checked_by_those_who_read_it(tmp_path: Path) -> None:
    alice, bob, carol = team(tmp_path, MemoryLedger())
    bob.person.chat.clock = behind(BEHIND)
    sent(carol, "carol's last word")
    until(bob, "team", shows("carol's last word"))
    until(alice, "team", shows("carol's last word"))  # read before the removal: kept (see the removal window)
    alice.groups.remove("team", "carol")
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    sent(bob, "after carol left")  # names carol's message of epoch 1, the newest he read
    view = until(alice, "team", shows("after carol left"))
    assert texts(view)[-2:] == ["carol's last word", "after carol left"]
    (problem,) = backdated(view)
    assert "after carol's message #" in problem.detail
    # carol, taken out, reads nothing of epoch 2 and is not troubled by it.
    view = carol.groups.get_update("team")
    assert carol.state("team").status == "removed" and "after carol left" not in texts(view)
    assert backdated(view) == []


def test_a_mark_is_checked_against_a_message_read_in_an_earlier_update_and_the_times_kept_are_bounded(
    tmp_path: Path,
) -> None:
    """carol reads alice's question, then two pages more of alice's lane, before bob's late reply to the
    question arrives: its page is no longer among those her update reads, its time is (``LaneState.times``)."""
    alice, bob, carol = team(tmp_path, MemoryLedger())
    sent(alice, "the question")
    question = alice.state("team").own(1).seq
    until(carol, "team", shows("the question"))
    until(bob, "team", shows("the question"))
    for i in range(45):
        sent(alice, f"alice {i}")
    until(carol, "team", shows("alice 44"))
    bob.person.chat.clock = behind(BEHIND)
    sent(bob, "the late answer")  # bob read nothing since the question: his mark names it
    view = until(carol, "team", shows("the late answer"))
    assert "the question" not in texts(view)  # its page is outside the window this update read
    (problem,) = backdated(view)
    assert f"after alice's message #{question} but" in problem.detail
    for i in range(45, 65):
        sent(alice, f"alice {i}")
    until(carol, "team", shows("alice 64"))
    kept = carol.state("team").lane(1, alice.fingerprint).times
    assert len(kept) == MAX_LANE_TIMES and kept[-1][0] == alice.state("team").own(1).seq


def test_the_times_kept_for_marks_are_those_of_the_last_epochs_only(tmp_path: Path) -> None:
    alice, _bob, carol = team(tmp_path, MemoryLedger())
    sent(alice, "in epoch 1")
    until(carol, "team", shows("in epoch 1"))
    assert carol.state("team").lane(1, alice.fingerprint).times
    name = "team"
    for epoch in range(2, MAX_MARK_EPOCHS + 3):
        alice.groups.rename(name, f"team {epoch}")
        until(carol, name, lambda v, new=f"team {epoch}": v.friend == new)
        name = f"team {epoch}"
    state = carol.state(name)
    assert state.epoch == MAX_MARK_EPOCHS + 2
    assert state.lane(1, alice.fingerprint).times == []
    assert state.lane(2, alice.fingerprint).times and state.lane(state.epoch, alice.fingerprint).times


def test_a_member_naming_a_message_written_after_its_own_cannot_get_that_messages_writer_reported(
    tmp_path: Path,
) -> None:
    """alice's modified client names bob's next message before he writes it; bob, honest, reads hers and
    replies. Each mark is checked against the date of what it names in its lane, not where that is shown:
    alice's is reported and moved after bob's reply, and bob's, which names hers, is not reported for that."""
    alice, bob, carol = team(tmp_path, MemoryLedger())
    members = sorted(alice.state("team").current().fingerprints())
    ahead = encode_mark(0, members.index(bob.fingerprint), bob.fingerprint, bob.state("team").own(1).seq + 1)
    alice.groups._causal_mark = lambda _state, _epoch: ahead  # type: ignore[method-assign]
    sent(alice, "x, claiming to have seen y")
    until(bob, "team", shows("x, claiming to have seen y"))
    sent(bob, "y, having seen x")
    # carol reads alice's lane first (the membership's order): where x is shown is decided before y is checked.
    view = until(carol, "team", lambda v: len(texts(v)) == 2)
    assert texts(view) == ["y, having seen x", "x, claiming to have seen y"]
    assert [p.lane for p in backdated(view)] == ["alice"]
