from songstep.cli import main

raise SystemExit(main())
