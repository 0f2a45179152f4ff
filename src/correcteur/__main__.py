import sys

from correcteur.cli import main

sys.exit(main())
