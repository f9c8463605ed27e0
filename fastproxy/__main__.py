from fastproxy.cli import main

raise SystemExit(main())
