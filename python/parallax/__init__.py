"""Parallax: interactive parallel computing for Jupyter.

The client API (`Client`, views, `AsyncResult`) comes in a later release; this package holds the
Jupyter server extension that mounts the Clusters page (`parallax.jupyter`).
"""

__version__ = "0.1.0"
