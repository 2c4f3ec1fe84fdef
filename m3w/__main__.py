from m3w.cli import main

raise SystemExit(main())
