"""Which user ids may act through the app API (pure logic).

A job's owner is a uid: a Firebase user's own for the app API, ``telegram:<chatId>`` for
a Telegram chat (``kiln.channels.telegram.chats.chat_uid``), ``api:…`` reserved for
server-to-server callers. The uid becomes part of Firestore document paths
(``users/{uid}/devices``) and of Storage object names (``generations/{uid}/…``), so one
that cannot be a path segment would only fail later, inside a job; and an app token
must not act as another channel's owner. The rules are listed in
docs/client-contract.md ("Identities").
"""

from __future__ import annotations

import unicodedata

from kiln.core.errors import RequestError

#: Owners that belong to another channel: an app token never acts as one of them.
RESERVED_PREFIXES = ("telegram:", "api:")
#: Firebase Auth's own limit on a uid.
UID_MAX = 128


def check_app_uid(uid: str) -> str:
    """``uid`` when an app caller may act as it.

    Raises:
        RequestError: 403 ``unsupported_uid`` for a uid that cannot name a document or an
            object, or reads as another (blank; ``/``, a ``.``/``..`` segment, ``__…__``,
            a control character, a formatting one such as a bidi override, over 128
            characters); 403 ``reserved_uid`` for another channel's owner.
    """
    bad = (not uid.strip() or len(uid) > UID_MAX or "/" in uid or uid in (".", "..")
           or ".." in uid or (uid.startswith("__") and uid.endswith("__"))
           or (not (uid.isascii() and uid.isprintable())
           and any(unicodedata.category(c) in ("Cc", "Cs", "Cf", "Zl", "Zp") for c in uid)))
    if bad:
        raise RequestError(403, "unsupported_uid", "This account's user id cannot be used "
                           "here (it is blank, contains '/', '..', a control or an invisible "
                           f"formatting character, or is over {UID_MAX} characters).")
    if uid.startswith(RESERVED_PREFIXES):
        raise RequestError(403, "reserved_uid", "This account's user id is reserved for "
                           "another channel ('telegram:' or 'api:').")
    return uid
