"""Moved to ``mynaemu.authority.lifecycle``; this name stays for existing imports."""

from .authority.lifecycle import CERT_CONTENT, CRL_FILES, REVOKED_FORMAT, suspend, write_crls

__all__ = ["CERT_CONTENT", "CRL_FILES", "REVOKED_FORMAT", "suspend", "write_crls"]
