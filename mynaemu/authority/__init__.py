"""The emulated JPKI authority: CAs, certificate status (CRL, OCSP), lifecycle and verifier.

``ca`` (the CAs and CV issuers; ``mynaemu.pki`` is this module) is all the card's issuance
needs. The HTTP service (``service``, Starlette + uvicorn) is imported only by whoever serves
it: the chip (``mynaemu.card``, ``mynaemu.aps``) imports nothing of it. ``hooks`` registers the
certificate operations of the scenario controls; ``mynaemu.controls`` imports it when needed.
"""

import sys as _sys

if "mynaemu.controls" in _sys.modules:  # the controls looked for us before we were imported
    from . import hooks as _hooks  # noqa: F401 - registers the certificate operations
