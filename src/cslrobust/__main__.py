"""``python -m cslrobust`` entry point."""

from cslrobust.cli.main import main

if __name__ == "__main__":
    main()
