"""`python -m provbackup` runs the command line."""

from provbackup.cli import main

raise SystemExit(main())
