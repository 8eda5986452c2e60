from slakevqa.cli import main

raise SystemExit(main())
