"""The command line: `sami-ray run | resume | status | principles | eval | serve | plan`.

app.py holds the commands; each command's work lives in its own module here (report, eval, serve, plan), and no
module of the package below the CLI imports this one.
"""

from .app import app, main

__all__ = ["app", "main"]
