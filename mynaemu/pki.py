"""Moved to ``mynaemu.authority.ca``; this name stays for existing imports.

``mynaemu.pki`` *is* that module (one module object, so attributes set on either are seen by both).
"""

import sys

from .authority import ca as _ca

sys.modules[__name__] = _ca
