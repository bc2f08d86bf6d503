"""`python -m lbcdn`: the same command line as the `lbcdn` console script."""

from lbcdn.cli import main

raise SystemExit(main())
