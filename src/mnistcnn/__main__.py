from mnistcnn.cli import main

raise SystemExit(main())
