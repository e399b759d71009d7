from kiln_dev.cli import main

raise SystemExit(main())
