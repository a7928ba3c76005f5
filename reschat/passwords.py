"""What a new password must be: at least 10 characters, and not rated easily guessed by zxcvbn.

The password is all that protects the private key file (scrypt, N = 2^17): whoever copies the file can
guess offline, as fast as their hardware allows, so a guessable password is the weak link. The rules
apply when an identity is created only; unlocking an existing identity accepts its password.
"""

from __future__ import annotations

from collections.abc import Sequence

from zxcvbn import zxcvbn

from reschat.errors import WeakPasswordError

MIN_LENGTH = 10
#: zxcvbn's scores: 0 too guessable, 1 very guessable, 2 somewhat guessable, 3 safely unguessable
#: (about 10^8 guesses or more), 4 very unguessable.
MIN_SCORE = 3
#: zxcvbn refuses longer input (its cost grows fast with the length); the first 72 characters are rated.
_RATED_LENGTH = 72


def check_new_password(password: str, *, user_inputs: Sequence[str] = ()) -> None:
    """Return if ``password`` may protect a new identity; raise WeakPasswordError with the reason if not.

    ``user_inputs`` (the user's name, say) count as easy to guess inside the password, whole and word
    by word.
    """
    if len(password) < MIN_LENGTH:
        raise WeakPasswordError(f"too short: use at least {MIN_LENGTH} characters")
    words = [part for text in user_inputs for part in (text, *text.split()) if part]
    rating = zxcvbn(password[:_RATED_LENGTH], user_inputs=[word[:_RATED_LENGTH] for word in dict.fromkeys(words)])
    if rating["score"] < MIN_SCORE:
        feedback = rating.get("feedback") or {}
        reason = str(feedback.get("warning") or "").strip().rstrip(".")
        if not reason:
            suggestions = [str(s).strip().rstrip(".") for s in feedback.get("suggestions") or [] if str(s).strip()]
            reason = suggestions[0] if suggestions else "a strength estimate rates it easily guessed"
        raise WeakPasswordError(
            f"too easy to guess: {reason[0].lower()}{reason[1:]}; use a few uncommon words or more characters"
        )
