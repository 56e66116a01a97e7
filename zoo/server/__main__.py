"""``python -m zoo.server``: see :mod:`zoo.server.cli`."""

from zoo.server.cli import exit_now, main

if __name__ == "__main__":
    main()
    exit_now()
