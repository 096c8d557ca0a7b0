"""Allow `python -m nodecache`."""

from nodecache.cli import main

if __name__ == "__main__":
    main()
