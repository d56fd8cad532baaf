from s3pull.cli import main

raise SystemExit(main())
