"""The emulated JPKI authority: CAs, certificate status (CRL, OCSP), lifecycle and verifier.

``ca`` (the CAs and CV issuers; ``mynaemu.pki`` is this module) is all the card's issuance
needs. The HTTP service (``service``, Starlette + uvicorn) is imported only by whoever serves
it: the chip (``mynaemu.card``, ``mynaemu.aps``) imports nothing of it.
"""
