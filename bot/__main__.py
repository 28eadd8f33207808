import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: no traceback for it
    sys.exit(130)
except ModuleNotFoundError as missing:  # `python -m bot` with a Python other than the set-up's
    sys.exit(f"error: this Python ({sys.executable}) lacks the bot's packages ({missing}). Run `make setup` "
             "once, then `source .venv/bin/activate` (or call .venv/bin/python -m bot).")

sys.exit(main())
