"""``python -m pacsvault`` runs the command line."""

from pacsvault.cli import main

raise SystemExit(main())
