import sys

from effdet.cli import main

sys.exit(main())
