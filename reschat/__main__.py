"""Allow ``python -m reschat``."""

from reschat.cli import main

raise SystemExit(main())
