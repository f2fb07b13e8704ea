"""``python -m common`` is ``labconnect``."""

from common.cli import main

main()
