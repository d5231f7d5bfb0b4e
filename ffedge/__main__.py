"""``python -m ffedge``: same as the ``ffedge`` command."""

from ffedge.cli import main

if __name__ == "__main__":
    main()
