"""KSM Lab application layer.

Adapts the simulator (`sim`) to the outside world: the dashboard server (FastAPI), the
kernel replayer and live view (`app.kernel`, standard library only, so it also runs inside a
bare qemu guest), and the `ksmlab` command line. Importing this package imports nothing
third-party; each subpackage imports what it needs.
"""
