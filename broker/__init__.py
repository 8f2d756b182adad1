"""burst-broker: find, quote and provision GPU clusters on commercial clouds.

The quote path (``broker.quote``, ``broker.ranking``) is pure and imports no cloud SDK.
"""

__version__ = "0.1.0"
