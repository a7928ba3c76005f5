"""The error hierarchy: one class per thing a user can understand and act on.

Every message is one line that says what happened and, where there is something to do, what to do.
The CLI prints ``reschat: error: <message>``; the menus print the message and carry on.
"""

from __future__ import annotations


class ReschatError(Exception):
    """Base class of every error ResChat reports to its user."""


class ConfigError(ReschatError):
    """The configuration file or a setting is wrong."""


class ProfileError(ReschatError):
    """The profile (identity, friend store) is missing, unreadable or already exists."""


class WrongPasswordError(ReschatError):
    """The password does not open the private key."""


class WeakPasswordError(ReschatError):
    """A new password is too short or too easily guessed."""


class KeyFormatError(ReschatError):
    """A public key, PEM block or contact card could not be read."""


class FriendError(ReschatError):
    """Base class for friend-store problems."""


class UnknownFriendError(FriendError):
    """No friend has that nickname."""


class DuplicateFriendError(FriendError):
    """The nickname or the key is already in the friend store, or is the user's own."""


class MessageError(ReschatError):
    """A message cannot be sent as typed (empty, too long, bad file)."""


class PageFormatError(ReschatError):
    """A value read from the ledger is not a page this version understands."""


class IntegrityError(ReschatError):
    """A record failed verification (signature, hash chain, conversation binding)."""


class LedgerError(ReschatError):
    """Base class for failures of the key-value ledger."""


class LedgerUnavailableError(LedgerError):
    """The ledger could not be reached (tool missing, cannot connect, transport failure)."""


class LedgerMissingError(LedgerUnavailableError):
    """The local ledger file is not there (never made, deleted or replaced): made only when asked."""


class LedgerTimeoutError(LedgerError):
    """The ledger did not answer in time; the request was abandoned."""


class LedgerConfigError(LedgerError):
    """The ledger's own configuration (tool path, client config) is missing or malformed."""


class ValueTooLargeError(LedgerError):
    """A key or value is over the ledger's size limit."""
