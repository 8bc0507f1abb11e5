"""The card as data: ``profile.toml`` (the default card profile) and ``transcripts/`` (one client flow per file).

A package only so that both ship inside mynaemu's wheel; read them with ``importlib.resources``
(``mynaemu.profile.DEFAULT_PROFILE``, ``mynaemu.transcript.TRANSCRIPT_DIR``), never by a path
relative to the source tree.
"""
