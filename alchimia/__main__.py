from alchimia.cli import main

raise SystemExit(main())
