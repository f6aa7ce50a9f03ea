"""aifinops agent: an OpenAI-compatible gateway that prices and records every request.

Importing this package does nothing: no config load, no database, no model.
"""

from __future__ import annotations

__version__ = "0.1.0"
