"""Names that the CLI's parser and the modules behind it share, in a module that imports nothing.

Building the parser must not import the card (``mynaemu --help`` stays a bare interpreter's
start-up plus argparse): the parser takes its choices from here, and so do the controls.
"""

from __future__ import annotations

FAULT_KINDS = ("remove", "mute", "error", "slow")
# RFC 5280 revocation reasons the emulated authority accepts.
REVOKE_REASONS = ("keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation", "privilegeWithdrawn",
                  "unspecified")
