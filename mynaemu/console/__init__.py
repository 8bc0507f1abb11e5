"""A trainer's console: a web page (127.0.0.1 only, a random token) showing served cards live.

``mynaemu console [CARD_DIR...]`` serves the cards in PC/SC readers in-process (the machinery of
``mynaemu serve``) or attaches to running ``serve`` processes through their control channels,
and serves a Starlette app (``mynaemu.console.app``) with uvicorn. Each APDU is pushed to the
page over server-sent events from a card wrapper (``mynaemu.console.live``); guided scenarios
(``mynaemu.console.scenarios``) send real APDUs through the same PC/SC reader a client would use.
"""

from __future__ import annotations
