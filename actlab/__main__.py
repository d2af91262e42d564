"""`python -m actlab` is the same as the `actlab` command."""

from actlab.cli.main import main

raise SystemExit(main())
