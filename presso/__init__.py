"""presso: hardware-aware search for per-layer compression configurations.

Importing presso is light on purpose: torch, transformers, Ray and every backend are
imported by the modules that use them.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
