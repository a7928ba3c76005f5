"""Unread counts without the password are those of the last verified update, never from unverified data."""

from __future__ import annotations

from collections.abc import Callable

from reschat.chat import peek_unread_counts
from tests.conftest import Person


def test_peek_unread_counts_matches_the_service(people: Callable[..., tuple[Person, Person]]) -> None:
    alice, bob = people()
    for i in range(3):
        alice.chat.send_message(f"m{i}", "bob")
    assert peek_unread_counts(bob.friends) == {"alice": 0}  # nothing verified yet
    assert bob.chat.unread_counts() == {"alice": 3}
    assert peek_unread_counts(bob.friends) == {"alice": 3}
    bob.chat.get_update("alice")
    bob.chat.mark_read("alice")
    alice.chat.send_message("one more", "bob")
    assert peek_unread_counts(bob.friends) == {"alice": 0}
    assert bob.chat.unread_counts() == {"alice": 1}
    assert peek_unread_counts(bob.friends) == {"alice": 1}
