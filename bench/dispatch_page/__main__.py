from bench.dispatch_page.run import main

raise SystemExit(main())
