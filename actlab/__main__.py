"""`python -m actlab` is the same as the `actlab` command."""

from actlab.cli import main

raise SystemExit(main())
