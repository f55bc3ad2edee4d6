"""The web dashboard over results stores: runs, Pareto fronts, per-layer configurations,
convergence and run comparison, live while a search runs (``presso dashboard``), and the same
views as one self-contained HTML file (``presso report``).

Importing this package is light; the HTTP server and Plotly.js are loaded by the commands.
"""

from __future__ import annotations
