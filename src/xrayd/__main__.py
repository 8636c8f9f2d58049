from xrayd.cli import main

raise SystemExit(main())
