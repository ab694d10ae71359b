"""``python3 -m pighand_token`` is the ``pighand-token`` command."""

from pighand_token.cli import main

if __name__ == "__main__":
    main()
